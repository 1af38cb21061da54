//! Discovery you can trust (issue 8, point 8): records are hints, and what a verified node says
//! over its QUIC connection outranks them. A keyless attacker host forges mDNS goodbyes,
//! redirects, addresses and health flags (`forge_mdns.py`, Python's standard library only); a
//! provider restarts in place under load; two hosts are given one `--node`. In every case client
//! loops on the consumer hosts make many short connections and must see zero failures, and
//! every discovery change the consumer makes is a log line at info.
//!
//! The attacker never gets the mesh key: it learns what it forges the way any host on the LAN
//! can, from `ambassador ls --json` run without a key (which lists the records of every mesh).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{AMBASSADOR, Host, Lan, MS, Out, Proc, SEC, now_epoch, report, wait_until};
use crate::nodes::{
    Conn, assert_all_from, assert_no_failure, client_script, count_who, read_conns, started_after,
    wait_all_answer, wait_who, worst,
};

/// The forger (see its docstring), written into each test's directory.
const FORGER: &str = include_str!("forge_mdns.py");

/// The fixed QUIC port of the providers (and of the attacker's own, wrong-mesh, ambassador), so
/// that a forged address answers QUIC on the port the real record names.
const QUIC_PORT: u16 = 7443;

// ---------------------------------------------------------------------------------------------
// The attacker.

/// What any host on the LAN reads of an instance's records (no key needed).
#[derive(Debug, Clone)]
struct Record {
    /// The instance's full name.
    fullname: String,
    /// Its host name (`<node>-<mesh8>.local.`, the SRV target).
    host: String,
    /// Its SRV port (the node's QUIC port).
    quic_port: u16,
    /// Its TXT values, `k=v`.
    txt: Vec<String>,
}

impl Record {
    /// Reads the record of `service` by `node` with `ls --json` on `attacker` (no mesh key).
    fn read(lan: &Lan, attacker: &Host, service: &str, node: &str) -> Record {
        let mut row = None;
        let found = wait_until(20 * SEC, 200 * MS, || {
            let out = lan.run(
                attacker,
                20 * SEC,
                &[AMBASSADOR, "ls", "--json", "--interface", &attacker.ifname],
            );
            assert!(out.ok(), "ls on the attacker: {out:?}");
            let rows: serde_json::Value =
                serde_json::from_str(&out.stdout).expect("ls --json prints JSON");
            row = rows
                .as_array()
                .expect("an array")
                .iter()
                .find(|r| r["service"] == service && r["node"] == node)
                .cloned();
            row.is_some()
        });
        assert!(found, "the attacker never saw {service}@{node} with ls");
        let row = row.unwrap();
        assert!(
            row["mesh_match"].is_null(),
            "the attacker must be keyless, yet ls compared mesh ids: {row}"
        );
        let s = |k: &str| {
            row[k]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| row[k].to_string())
        };
        let fullname = s("fullname");
        // `<service>@<node>_<mesh8>._ambassador._udp.local.` lives on `<node>-<mesh8>.local.`.
        let tag = fullname
            .split_once('@')
            .and_then(|(_, rest)| rest.split('.').next())
            .and_then(|n| n.rsplit_once('_'))
            .map(|(_, tag)| tag.to_string())
            .unwrap_or_else(|| panic!("unexpected instance name {fullname}"));
        let up = if row["up"] == true { "up" } else { "down" };
        let txt = vec![
            "v=1".to_string(),
            format!("svc={}", s("service")),
            format!("port={}", s("port")),
            format!("node={}", s("node")),
            format!("mesh={}", s("mesh")),
            format!("id={}", s("fingerprint")),
            format!("w={}", s("weight")),
            format!("h={up}"),
        ];
        Record {
            host: format!("{node}-{tag}.local."),
            quic_port: row["quic_port"].as_u64().expect("quic_port") as u16,
            fullname,
            txt,
        }
    }

    /// The forger's arguments for `cmd` about this record.
    fn forge_args(&self, lan: &Lan, attacker: &Host, cmd: &str, opts: Forge) -> Vec<String> {
        let script = lan.path("forge_mdns.py");
        if !script.exists() {
            fs::write(&script, FORGER).expect("write the forger");
        }
        let mut args: Vec<String> = vec![
            "python3".into(),
            script.display().to_string(),
            cmd.into(),
            "--ip".into(),
            attacker.ip.to_string(),
            "--instance".into(),
            self.fullname.clone(),
            "--host".into(),
            self.host.clone(),
            "--port".into(),
            self.quic_port.to_string(),
            // The attacker's own host and address: where a redirect and an added address lead.
            "--to-host".into(),
            format!("evil-{}.local.", attacker.name),
            "--to-ip".into(),
            attacker.ip.to_string(),
            "--to-port".into(),
            REDIRECT_PORT.to_string(),
            "--addr".into(),
            attacker.ip.to_string(),
            "--count".into(),
            opts.count.to_string(),
            "--interval".into(),
            format!("{}", opts.interval.as_secs_f64()),
        ];
        for t in &self.txt {
            args.extend(["--txt".to_string(), t.clone()]);
        }
        args
    }

    /// Sends `opts.count` forged packets of kind `cmd` from `attacker`, to completion.
    fn forge(&self, lan: &Lan, attacker: &Host, cmd: &str, opts: Forge) -> Out {
        let args = self.forge_args(lan, attacker, cmd, opts);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lan.run(attacker, 60 * SEC, &args);
        assert!(out.ok(), "the forger ({cmd}) failed: {out:?}");
        out
    }

    /// Like [`Record::forge`], in the background (log `forge-<cmd>.log`).
    fn spawn_forge(&self, lan: &Lan, attacker: &Host, cmd: &str, opts: Forge) -> Proc {
        let args = self.forge_args(lan, attacker, cmd, opts);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lan.spawn(attacker, &format!("forge-{cmd}"), &args)
    }
}

/// How many forged packets, how far apart.
#[derive(Debug, Clone, Copy)]
struct Forge {
    count: usize,
    interval: Duration,
}

/// A dozen packets, 50 ms apart.
const DOZEN: Forge = Forge {
    count: 12,
    interval: Duration::from_millis(50),
};

/// Where a forged redirect sends the instance: the attacker's address, this port.
const REDIRECT_PORT: u16 = 7444;

/// Ambassadors of another mesh on the attacker host, on [`QUIC_PORT`] (where a forged address
/// of the real host leads) and on [`REDIRECT_PORT`] (where a forged SRV leads): QUIC servers
/// that answer, with certificates that do not chain to the mesh root.
fn attacker_ambassadors(lan: &Lan, attacker: &Host) {
    for (name, port) in [("evil", QUIC_PORT), ("evil2", REDIRECT_PORT)] {
        let evil = lan.mesh_key(name);
        lan.announce(attacker, &evil)
            .spec("redis:6379")
            .node(name)
            .bind(port)
            .start();
    }
}

// ---------------------------------------------------------------------------------------------
// Client loops.

/// `threads` loops of one new connection per `GET who` through 127.0.0.1:`port`, one JSON line
/// per connection, until the stop file exists. While the hold file exists, every loop waits
/// between two connections (and says so with a `held-<thread>` file): a SIGKILL injected then
/// hits no connection in flight, whose bytes the killed process took with it (no proxy can
/// save those); what the tests claim is that no connection made after the fault fails.
const CLIENT: &str = r#"
import json, os, socket, sys, threading, time

out, stop, hold, nthreads, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
results = open(out, "a", buffering=1)
lock = threading.Lock()

{GET_WHO}
def worker(tid):
    held = "%s-held-%d" % (hold, tid)
    while not os.path.exists(stop):
        if os.path.exists(hold):
            open(held, "w").close()
            while os.path.exists(hold):
                time.sleep(0.001)
            os.remove(held)
            continue
{RECORD_ONE}
        time.sleep(0.01)

{RUN_WORKERS}
"#;

/// A client loop ([`CLIENT`]) running on a host.
struct Client {
    proc: Proc,
    results: PathBuf,
    stop: PathBuf,
    hold: PathBuf,
    threads: usize,
}

impl Client {
    /// Starts `threads` loops through `port` on `host`; its files are named after `label`.
    fn start(lan: &Lan, host: &Host, label: &str, port: u16, threads: usize) -> Client {
        let script = lan.path("trust-client.py");
        if !script.exists() {
            fs::write(&script, client_script(CLIENT)).expect("write the client script");
        }
        let results = lan.path(&format!("{label}.jsonl"));
        let stop = lan.path(&format!("{label}.stop"));
        let hold = lan.path(&format!("{label}.hold"));
        let proc = lan.spawn(
            host,
            label,
            &[
                "python3",
                script.to_str().unwrap(),
                results.to_str().unwrap(),
                stop.to_str().unwrap(),
                hold.to_str().unwrap(),
                &threads.to_string(),
                &port.to_string(),
            ],
        );
        Client {
            proc,
            results,
            stop,
            hold,
            threads,
        }
    }

    /// Runs `fault` while every loop of every client in `clients` waits between two
    /// connections; returns the epoch time right after it.
    fn between_connections(clients: &[&Client], fault: impl FnOnce()) -> f64 {
        for c in clients {
            fs::write(&c.hold, "").expect("create the hold file");
        }
        let held = wait_until(10 * SEC, MS, || {
            clients.iter().all(|c| {
                (0..c.threads)
                    .all(|t| Path::new(&format!("{}-held-{t}", c.hold.display())).exists())
            })
        });
        assert!(held, "the client loops did not pause within 10 s");
        fault();
        let t = now_epoch();
        for c in clients {
            fs::remove_file(&c.hold).expect("remove the hold file");
        }
        t
    }

    fn conns(&self) -> Vec<Conn> {
        read_conns(&self.results)
    }

    /// Connections started after `t` (epoch seconds) and finished so far.
    fn since(&self, t: f64) -> Vec<Conn> {
        self.conns().into_iter().filter(|c| c.start > t).collect()
    }

    /// Waits until `n` connections started after `t` have finished.
    fn wait_since(&self, lan: &Lan, t: f64, n: usize, timeout: Duration) {
        assert!(
            wait_until(timeout, 20 * MS, || self.since(t).len() >= n),
            "{}: only {} connections since the mark within {timeout:?}: {:?}; its log: {}",
            self.proc.label,
            self.since(t).len(),
            count_who(&self.since(t)),
            lan.log(&self.proc)
        );
    }

    /// Stops the loops; every connection.
    fn stop(&self, lan: &Lan) -> Vec<Conn> {
        fs::write(&self.stop, "").expect("create the stop file");
        let status = lan.wait_exit(&self.proc, 40 * SEC);
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not stop cleanly ({status:?}): {}",
            self.proc.label,
            lan.log(&self.proc)
        );
        self.conns()
    }
}

/// Runs the load for `d` (a load phase, not a synchronisation).
fn load_for(d: Duration) {
    std::thread::sleep(d);
}

// ---------------------------------------------------------------------------------------------
// Logs and status.

/// Asserts that `p` logged, at info, a line containing every one of `needles`; returns it.
fn assert_info(lan: &Lan, p: &Proc, needles: &[&str], what: &str) -> String {
    let log = lan.log(p);
    let line = log
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("{what}: {} logged no line with {needles:?}", p.label));
    assert!(
        line.contains(" INFO "),
        "{what}: the line is not at info: {line}"
    );
    line.to_string()
}

/// Waits until `p` logs a line containing every one of `needles`.
fn wait_line(lan: &Lan, p: &Proc, needles: &[&str], timeout: Duration) -> bool {
    wait_until(timeout, 20 * MS, || lan.count_lines(p, needles) > 0)
}

/// `ambassador status --json` on `host` with `XDG_RUNTIME_DIR=run` (nodes given one name need
/// runtime dirs of their own: status sockets are named after the node).
fn status_in(lan: &Lan, host: &Host, run: Option<&Path>) -> Vec<serde_json::Value> {
    let env = run.map(|r| format!("XDG_RUNTIME_DIR={}", r.display()));
    let mut args = vec!["env"];
    if let Some(e) = &env {
        args.push(e);
    }
    args.extend([AMBASSADOR, "status", "--json"]);
    let out = lan.run(host, 10 * SEC, &args);
    assert!(out.ok(), "ambassador status failed: {out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}): {out:?}"));
    v.as_array().expect("an array").clone()
}

/// The instances (key, health, total) of `service` as consumer `node` on `host` reports them.
fn instances(lan: &Lan, host: &Host, node: &str, service: &str) -> Vec<(String, String, u64)> {
    let all = status_in(lan, host, None);
    let Some(n) = all.iter().find(|n| n["node"] == node) else {
        return Vec::new();
    };
    n["connect"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["service"] == service)
        .flat_map(|c| c["instances"].as_array().cloned().unwrap_or_default())
        .map(|i| {
            (
                i["instance"].as_str().unwrap_or_default().to_string(),
                i["health"].as_str().unwrap_or_default().to_string(),
                i["total"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// One provider of `redis` on `host` (node = the host's name, [`QUIC_PORT`]), its Redis
/// answering `who` = the host's name.
fn provider(lan: &Lan, host: &Host, key: &Path) -> Proc {
    lan.redis(host, 6379).who(&host.name).start();
    lan.announce(host, key)
        .spec("redis:6379")
        .bind(QUIC_PORT)
        .start()
}

// ---------------------------------------------------------------------------------------------
// 1. Forged goodbyes.

/// Case 1: while the consumer holds its verified connection to B, a keyless host sends a dozen
/// mDNS goodbyes for B's instance (TTL 0 PTR/SRV/TXT, cache-flush bit where the real records
/// have it). ~10 s of short client connections see zero failures, all served by B; the consumer
/// logs the goodbye as ignored (at info), never as a withdrawal, and B stays healthy.
#[test]
fn forged_goodbyes_are_ignored_while_the_node_serves() {
    let (lan, [a, b, e]) = lan!("a", "b", "e");
    let key = lan.mesh_key("mesh");
    provider(&lan, &b, &key);
    let connect = lan.connect(&a, &key).spec("redis:6379").start();
    wait_who(&lan, &a, 6379, "b", 15 * SEC);
    let record = Record::read(&lan, &e, "redis", "b");

    let client = Client::start(&lan, &a, "client", 6379, 2);
    client.wait_since(&lan, 0.0, 20, 10 * SEC);
    let t0 = now_epoch();
    // A goodbye sets the record's TTL to 1 s (RFC 6762 §10.1); an answer of the real node within
    // that second (to any query on the LAN) refreshes it and the goodbye never takes effect. So
    // the attacker, like a real one, sends another dozen until its goodbye lands (at most 4).
    let mut rounds = 0;
    let ignored = wait_until(20 * SEC, MS, || {
        rounds += 1;
        record.forge(&lan, &e, "goodbye", DOZEN);
        wait_line(&lan, &connect, &["mDNS goodbye ignored"], 3 * SEC) || rounds >= 4
    }) && lan.count_lines(&connect, &["mDNS goodbye ignored"]) > 0;
    assert!(
        ignored,
        "the consumer never logged the forged goodbye as ignored ({rounds} dozens sent)"
    );
    let t_ignored = now_epoch() - t0;
    load_for(Duration::from_secs_f64((t0 + 10.0 - now_epoch()).max(0.0)));
    let conns = client.stop(&lan);
    let during = started_after(&conns, t0);
    report(&format!(
        "FIGURE forged goodbyes: ignored {t_ignored:.2}s after the first ({rounds} dozen(s) sent); {} connections in ~10 s from the first goodbye {:?}, worst {:.3?}",
        during.len(),
        count_who(&during),
        worst(&during)
    ));
    assert_no_failure(&conns, "client loop during forged goodbyes");
    assert!(during.len() >= 100, "too few connections: {}", during.len());
    assert_all_from(&during, "b", "client loop");
    assert_eq!(
        lan.count_lines(&connect, &["withdrawn"]),
        0,
        "the consumer took a forged goodbye for a withdrawal: {}",
        lan.log_excerpt(&connect, &["withdrawn"], 5, "\n")
    );
    let view = instances(&lan, &a, "a", "redis");
    assert!(
        view.len() == 1 && view[0].1 == "healthy",
        "status of A after the goodbyes: {view:?}"
    );
    // Case 5: the discovery changes of this scenario, each a line at info.
    assert_info(&lan, &connect, &["discovered", "redis@b_"], "discovered");
    assert_info(&lan, &connect, &["verified node", "node=b"], "confirmed");
    assert_info(&lan, &connect, &["mDNS goodbye ignored"], "goodbye ignored");
}

// ---------------------------------------------------------------------------------------------
// 2. Forged records.

/// Case 2, a running consumer: forged answers (cache-flush bit set) for B's instance redirect
/// its SRV to the attacker's address and another port (where an ambassador of another mesh
/// answers QUIC), add the attacker's address to B's host name, and set TXT h=down. Each forgery reaches
/// the consumer (a "record updated" line), and the client loop sees zero failures, all served
/// by B, which stays healthy.
#[test]
fn forged_records_do_not_move_a_running_consumer() {
    let (lan, [a, b, e]) = lan!("a", "b", "e");
    let key = lan.mesh_key("mesh");
    provider(&lan, &b, &key);
    attacker_ambassadors(&lan, &e);
    let connect = lan.connect(&a, &key).spec("redis:6379").start();
    wait_who(&lan, &a, 6379, "b", 15 * SEC);
    let record = Record::read(&lan, &e, "redis", "b");

    let client = Client::start(&lan, &a, "client", 6379, 2);
    client.wait_since(&lan, 0.0, 20, 10 * SEC);
    let t0 = now_epoch();
    let mut seen = Vec::new();
    for cmd in ["redirect", "addaddr", "down"] {
        let before = lan.count_lines(&connect, &["record updated", "redis@b_"]);
        let t = now_epoch();
        record.forge(&lan, &e, cmd, DOZEN);
        let reached = wait_until(5 * SEC, 20 * MS, || {
            lan.count_lines(&connect, &["record updated", "redis@b_"]) > before
        });
        seen.push((cmd, reached));
        assert!(
            reached,
            "the forged {cmd} never reached the consumer (no \"record updated\" line)"
        );
        client.wait_since(&lan, t, 20, 10 * SEC);
    }
    load_for(2 * SEC);
    let conns = client.stop(&lan);
    let during = started_after(&conns, t0);
    report(&format!(
        "FIGURE forged records (redirect, addaddr, h=down) against a running consumer: {} connections {:?}, worst {:.3?}",
        during.len(),
        count_who(&during),
        worst(&during)
    ));
    assert_no_failure(&conns, "client loop during forged records");
    assert_all_from(&during, "b", "client loop");
    let view = instances(&lan, &a, "a", "redis");
    assert!(
        view.len() == 1 && view[0].1 == "healthy",
        "status of A after the forgeries: {view:?}"
    );
    assert_eq!(lan.count_lines(&connect, &["withdrawn"]), 0);
    assert_info(&lan, &connect, &["record updated", "redis@b_"], "updated");
}

/// Case 2, a consumer that starts during forged answers: while the attacker keeps sending the
/// three forgeries in turn (10 a second, for up to 40 s), a consumer starts on A; its first client connection
/// (one `redis-cli`, not retried) gets B's answer within `--wait` (5 s), and a client loop
/// afterwards sees zero failures.
#[test]
fn consumer_started_during_forged_answers_gets_through() {
    let (lan, [a, b, e]) = lan!("a", "b", "e");
    let key = lan.mesh_key("mesh");
    provider(&lan, &b, &key);
    attacker_ambassadors(&lan, &e);
    let record = Record::read(&lan, &e, "redis", "b");
    let forger = record.spawn_forge(
        &lan,
        &e,
        "mix",
        Forge {
            count: 400,
            interval: 100 * MS,
        },
    );
    // The forgeries are on the air (and in B's neighbours' caches) before the consumer starts.
    assert!(
        lan.wait_log(&forger, "sent mix 10/", 10 * SEC),
        "the forger did not start: {}",
        lan.log(&forger)
    );
    const WAIT: Duration = Duration::from_secs(5);
    let connect = lan.connect(&a, &key).spec("redis:6379").wait("5s").start();
    assert!(
        lan.wait_tcp_listen(&a, 6379, 10 * SEC),
        "the consumer does not listen"
    );
    let t0 = Instant::now();
    let first = lan.run(&a, 15 * SEC, &["redis-cli", "-p", "6379", "GET", "who"]);
    let took = t0.elapsed();
    report(&format!(
        "FIGURE consumer started during forged answers: first connection ended after {took:.2?} with {:?}; --wait {WAIT:?}",
        first.stdout.trim()
    ));
    // Checked at the end, so that a failure here does not hide how the rest goes.
    let mut failures = Vec::new();
    if first.stdout.trim() != "b" {
        failures.push(format!(
            "the first client connection failed during forged answers after {took:?}: {first:?}"
        ));
    } else if took >= WAIT {
        failures.push(format!("the first connection took {took:?}"));
    }
    let client = Client::start(&lan, &a, "client", 6379, 2);
    let t1 = now_epoch();
    let enough = wait_until(20 * SEC, 20 * MS, || client.since(t1).len() >= 100);
    let forging = lan.running(&forger);
    let conns = client.stop(&lan);
    let failed: Vec<&Conn> = conns.iter().filter(|c| c.err.is_some()).collect();
    if !enough || !failed.is_empty() {
        failures.push(format!(
            "client loop during forged answers: {} of {} connections failed in 20 s {:?}, e.g. {:?}",
            failed.len(),
            conns.len(),
            count_who(&conns),
            failed.first()
        ));
    } else {
        assert_all_from(&conns, "b", "client loop");
    }
    assert!(
        forging,
        "the forger stopped before the client loop ended: the loop did not run under forgery"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_info(&lan, &connect, &["discovered", "redis@b_"], "discovered");
    assert_info(&lan, &connect, &["verified node", "node=b"], "confirmed");
}

// ---------------------------------------------------------------------------------------------
// 3. Restarts in place under load.

/// Provider B restarts in place (same `--node`, same service, a new certificate and QUIC
/// port): `signal` to its ambassador, wait for the exit, start it again at once, while client
/// loops run on two consumer hosts (A and C): zero failures on both, and the consumers log the
/// change (a withdrawal after SIGTERM, a superseded instance after SIGKILL).
fn restart_under_load(signal: &str) {
    let (lan, [a, b, c]) = lan!("a", "b", "c");
    let key = lan.mesh_key("mesh");
    lan.redis(&b, 6379).who("b").start();
    let announce = || lan.announce(&b, &key).spec("redis:6379").start();
    let old = announce();
    let consumers = [&a, &c].map(|h| lan.connect(h, &key).spec("redis:6379").start());
    for h in [&a, &c] {
        wait_who(&lan, h, 6379, "b", 15 * SEC);
    }
    let old_keys: Vec<Vec<String>> = [(&a, "a"), (&c, "c")]
        .iter()
        .map(|(h, n)| {
            instances(&lan, h, n, "redis")
                .into_iter()
                .map(|i| i.0)
                .collect()
        })
        .collect();
    let clients =
        [(&a, "client-a"), (&c, "client-c")].map(|(h, l)| Client::start(&lan, h, l, 6379, 2));
    for cl in &clients {
        cl.wait_since(&lan, 0.0, 30, 10 * SEC);
    }

    let t_signal = now_epoch();
    let stop = || {
        lan.signal(&old, signal);
        if signal == "KILL" {
            assert!(lan.wait_exit(&old, 5 * SEC).is_some(), "B survived SIGKILL");
        }
    };
    if signal == "KILL" {
        // No connection in flight when the process dies (see CLIENT); the loops resume at
        // once, before the restart, so they meet the dead node's connection first.
        Client::between_connections(&[&clients[0], &clients[1]], stop);
    } else {
        // A drain lets the connections in flight finish: the loops run on.
        stop();
    }
    let status = lan
        .wait_exit(&old, 15 * SEC)
        .expect("the old ambassador did not exit");
    if signal == "TERM" {
        assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    }
    let t_exit = now_epoch();
    let new = announce();
    // Both consumers use the new instance (a new key: the same name, another certificate).
    for ((h, n), old) in [(&a, "a"), (&c, "c")].iter().zip(&old_keys) {
        let used = wait_until(15 * SEC, 20 * MS, || {
            instances(&lan, h, n, "redis")
                .iter()
                .any(|(k, health, total)| !old.contains(k) && health == "healthy" && *total > 0)
        });
        assert!(
            used,
            "consumer {n} did not use the restarted node within 15 s: {:?}",
            instances(&lan, h, n, "redis")
        );
    }
    let t_used = now_epoch();
    for cl in &clients {
        cl.wait_since(&lan, t_used, 50, 15 * SEC);
    }
    let conns: Vec<Vec<Conn>> = clients.iter().map(|cl| cl.stop(&lan)).collect();
    let all: Vec<Conn> = conns.iter().flatten().cloned().collect();
    let after: Vec<Conn> = all.iter().filter(|c| c.end > t_signal).cloned().collect();
    report(&format!(
        "FIGURE restart in place (SIG{signal} + immediate restart) under load from 2 consumer hosts: old exited {:.2}s after the signal, \
         both consumers used the new instance {:.2}s after its start; {} connections since the signal, worst {:.3?}, {} over 0.5 s; {} in all {:?}",
        t_exit - t_signal,
        t_used - t_exit,
        after.len(),
        worst(&after),
        after.iter().filter(|c| c.latency() > 500 * MS).count(),
        all.len(),
        count_who(&all),
    ));
    for (cl, conns) in clients.iter().zip(&conns) {
        assert_no_failure(
            conns,
            &format!("{} across SIG{signal} + restart", cl.proc.label),
        );
    }
    assert!(lan.running(&new));
    match signal {
        "TERM" => {
            // A graceful stop is known at once: no client waits on the old port.
            assert!(
                worst(&after) < SEC,
                "after SIGTERM a connection waited {:?} (the old port?)",
                worst(&after)
            );
            // The drain reaches each consumer over QUIC: the control stream's draining flag
            // (a withdrawal), or, when the node exits before that message leaves (no open
            // connection to wait for), the connection's typed close ("the peer is stopping").
            let withdrawn = ["withdrawn by its node", "stopping"];
            let closed = ["peer connection lost", "the peer is stopping"];
            for p in &consumers {
                assert!(
                    wait_until(5 * SEC, 20 * MS, || lan.count_lines(p, &withdrawn) > 0
                        || lan.count_lines(p, &closed) > 0),
                    "{} did not log the drain: {}",
                    p.label,
                    lan.log_excerpt(p, &["withdrawn", "lost", "superseded"], 5, "\n")
                );
                let how = if lan.count_lines(p, &withdrawn) > 0 {
                    &withdrawn
                } else {
                    &closed
                };
                let line = assert_info(&lan, p, how, "withdrawn");
                report(&format!("  {} saw the drain as: {line}", p.label));
            }
        }
        _ => {
            // The old process is gone: the new record's liveness check drops its connection, and
            // its records leave as superseded.
            for p in &consumers {
                assert!(
                    wait_line(&lan, p, &["superseded"], 10 * SEC),
                    "{} never logged the killed node's instance as superseded: {}",
                    p.label,
                    lan.log_excerpt(p, &["restart", "superseded", "lost"], 10, "\n")
                );
                assert_info(&lan, p, &["superseded"], "superseded");
            }
        }
    }
    for p in &consumers {
        // Two "discovered" lines: the first node, then the restarted one.
        assert!(
            lan.count_lines(p, &["discovered", "redis@b_"]) >= 2,
            "{}: the restarted node was not logged as discovered",
            p.label
        );
        assert_info(&lan, p, &["discovered", "redis@b_"], "discovered");
    }
}

/// Case 3: SIGTERM then an immediate restart, under load from two consumer hosts: zero failed
/// connections, and none waits a second (the drain is known at once, the old port is not
/// tried).
#[test]
fn restart_after_sigterm_under_load_loses_nothing() {
    restart_under_load("TERM");
}

/// Case 3: SIGKILL then an immediate restart, under load from two consumer hosts: zero failed
/// connections; the killed node's old instance is superseded.
#[test]
fn restart_after_sigkill_under_load_loses_nothing() {
    restart_under_load("KILL");
}

// ---------------------------------------------------------------------------------------------
// 4. Two nodes with one name.

/// Case 4: providers on B and C are both given `--node twin`. The consumer on A uses both (two
/// instances of one name, distinct keys); each provider warns naming the other's address, lists
/// it in `status --json` `name_conflicts`; `ls --json` marks both rows `name_conflict`; a
/// consumer started later (on D) uses both as well. Then B
/// stops (SIGTERM) under a client loop: zero failures, C keeps serving, and B's goodbye (for the
/// name C shares) is ignored by the consumer while C serves it.
#[test]
fn two_nodes_with_one_name_are_both_used() {
    let (lan, [a, b, c, d]) = lan!("a", "b", "c", "d");
    let key = lan.mesh_key("mesh");
    let twin = |h: &Host| {
        let run = lan.path(&format!("run-{}", h.name));
        lan.redis(h, 6379).who(&h.name).start();
        let p = lan
            .announce(h, &key)
            .spec("redis:6379")
            .node("twin")
            .label(&format!("announce-twin-{}", h.name))
            .bind(QUIC_PORT)
            .under(&["env", &format!("XDG_RUNTIME_DIR={}", run.display())])
            .start();
        (p, run)
    };
    let (twin_b, run_b) = twin(&b);
    let (twin_c, run_c) = twin(&c);
    let connect = lan.connect(&a, &key).spec("redis:6379").start();
    wait_all_answer(&lan, &a, 6379, &["b", "c"], 20 * SEC);

    let view = instances(&lan, &a, "a", "redis");
    let keys: Vec<&String> = view.iter().map(|i| &i.0).collect();
    assert!(
        view.len() == 2
            && keys.iter().all(|k| k.starts_with("redis@twin_"))
            && keys[0] != keys[1]
            && view.iter().all(|i| i.2 > 0),
        "status of A: two used instances of the name twin expected: {view:?}"
    );
    // Each provider warns, naming the other's address, and reports the conflict.
    for (p, run, host, other) in [(&twin_b, &run_b, &b, &c), (&twin_c, &run_c, &c, &b)] {
        let needle = "another node of this mesh uses this node's name";
        let other_addr = format!("{}:{QUIC_PORT}", other.ip);
        assert!(
            wait_line(&lan, p, &[needle, &other_addr], 10 * SEC),
            "{} did not warn naming {other_addr}: {}",
            p.label,
            lan.log_excerpt(p, &["name"], 5, "\n")
        );
        let st = status_in(&lan, host, Some(run));
        let me = st
            .iter()
            .find(|n| n["node"] == "twin")
            .unwrap_or_else(|| panic!("status on {} lists no twin: {st:?}", host.name));
        let conflicts = me["name_conflicts"].as_array().cloned().unwrap_or_default();
        assert!(
            conflicts
                .iter()
                .any(|c| c.as_str().is_some_and(|s| s.contains(&other_addr))),
            "status --json of twin on {}: name_conflicts does not name {other_addr}: {me}",
            host.name
        );
    }
    // One `ls`, as a user runs it (its stderr shows mdns-sd's view with
    // NETNS_RUST_LOG=mdns_sd=debug).
    let key_s = key.display().to_string();
    let args = [
        "ls",
        "--json",
        "--interface",
        &a.ifname,
        "--mesh-key-file",
        &key_s,
    ];
    let ls = lan.run(&a, 20 * SEC, &[&[AMBASSADOR][..], &args[..]].concat());
    assert!(ls.ok(), "ls on A: {ls:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_str::<serde_json::Value>(&ls.stdout)
        .expect("ls --json prints JSON")
        .as_array()
        .expect("an array")
        .iter()
        .filter(|r| r["service"] == "redis")
        .cloned()
        .collect();
    // Checked at the end, so that a failure here does not hide how the rest goes.
    let mut failures = Vec::new();
    if !(rows.len() == 2 && rows.iter().all(|r| r["name_conflict"] == true)) {
        failures.push(format!(
            "ls --json on A: two rows marked name_conflict expected: {rows:?}; ls stderr: {}",
            ls.stderr
        ));
    }

    // A consumer that starts later (the twins' own announcements are over) finds both too.
    let connect_d = lan.connect(&d, &key).spec("redis:6379").start();
    let mut seen = std::collections::BTreeSet::new();
    let both = wait_until(10 * SEC, 10 * MS, || {
        seen.insert(crate::nodes::who(&lan, &d, 6379));
        seen.contains("b") && seen.contains("c")
    });
    if !both {
        failures.push(format!(
            "a consumer started later (D) reached only {seen:?} within 10 s: {}",
            lan.log_excerpt(&connect_d, &["discovered"], 5, " | ")
        ));
    }

    // B stops; C must stay reachable throughout.
    let client = Client::start(&lan, &a, "client", 6379, 2);
    client.wait_since(&lan, 0.0, 30, 10 * SEC);
    let t_term = now_epoch();
    lan.signal(&twin_b, "TERM");
    lan.wait_clean_exit(&twin_b, 15 * SEC, "twin on B after SIGTERM");
    let t_exit = now_epoch();
    client.wait_since(&lan, t_exit, 100, 15 * SEC);
    let conns = client.stop(&lan);
    let after = started_after(&conns, t_exit);
    report(&format!(
        "FIGURE two nodes named twin: B exited {:.2}s after SIGTERM; {} connections {:?}, after B's exit {:?}, worst {:.3?}",
        t_exit - t_term,
        conns.len(),
        count_who(&conns),
        count_who(&after),
        worst(&conns)
    ));
    assert_no_failure(&conns, "client loop while one twin stops");
    assert_all_from(&after, "c", "after B's exit");
    assert!(lan.running(&twin_c));
    assert!(
        crate::nodes::who_within(&lan, &a, 6379, "c", 5 * SEC).is_some(),
        "C unreachable after B stopped"
    );
    // B's drain removed B's instance only (over QUIC: the draining flag, or the typed close and
    // then "superseded", C holding the name); its goodbye, for the name C shares, removed
    // nothing of C's (ignored, when it took effect at all: C's answers refresh the shared PTR).
    // Each twin's warning names the other's certificate, the suffix of its instance key.
    let fp8 = |warner: &Proc| {
        let line = lan.log_line(warner, "another node of this mesh uses this node's name");
        let fp = line
            .split("fingerprint=")
            .nth(1)
            .unwrap_or_else(|| panic!("no fingerprint in the warning: {line}"));
        format!("#{}", &fp[..8])
    };
    let (key_b, key_c) = (fp8(&twin_c), fp8(&twin_b));
    let removed = |key: &str| {
        lan.log(&connect)
            .lines()
            .filter(|l| l.contains(key))
            .filter(|l| l.contains("withdrawn") || l.contains("superseded"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(5 * SEC, 20 * MS, || !removed(&key_b).is_empty()),
        "the consumer never logged B's instance ({key_b}) as removed: {}",
        lan.log_excerpt(&connect, &["withdrawn", "superseded", "lost"], 5, "\n")
    );
    let line = removed(&key_b).remove(0);
    assert!(line.contains(" INFO "), "not at info: {line}");
    assert!(
        removed(&key_c).is_empty(),
        "the consumer removed C's instance ({key_c}) when B stopped: {:?}",
        removed(&key_c)
    );
    let goodbye = lan.log_line(&connect, "mDNS goodbye ignored");
    report(&format!(
        "  twins: B's instance {key_b} removed: {line}\n  B's goodbye: {}",
        if goodbye.is_empty() {
            "no removal reached the consumer (C's answers kept the shared records)"
        } else {
            goodbye.as_str()
        }
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
