//! Migration and discovery beyond one LAN (issue 6, point 7): graceful drain, a service moving
//! to another host or port under load, DNS SRV records served by dnsmasq and changed during the
//! test, static backends reloaded on SIGHUP, Docker link variables, and avahi interoperability
//! (avahi-browse, avahi-publish, and avahi's reflector joining two subnets).
//!
//! avahi-daemon runs in a namespace with its own configuration, its own D-Bus system bus (a
//! private `dbus-daemon` on a socket in the test's directory: avahi-browse and avahi-publish
//! speak D-Bus only) and its own `/run` (a tmpfs in a private mount namespace, for its pid
//! file), so several daemons, and the machine's own, never meet.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Host, Lan, MS, Out, Proc, SEC, ip_in, now_epoch, report, wait_until};
use crate::nodes::{
    Conn, Session, assert_no_failure, client_script, connections_received, count_who, ls_json,
    node_status, read_conns, redis, redis_remote, set, spread, wait_who,
};

// ---------------------------------------------------------------------------------------------
// 1. Graceful drain.

/// Point 1: SIGTERM drains: the record is withdrawn, a new stream is refused with the typed
/// "draining" refusal and the consumer retries it on another instance, the open connection
/// keeps working until its client closes it, then the node exits 0. With `--drain-timeout 2s`
/// (and SIGINT) a connection that stays open is closed after the timeout, exit 0; a second
/// SIGTERM stops at once.
#[test]
fn drain_withdraws_refuses_new_streams_and_waits_for_open_ones() {
    let (lan, [a, b, c]) = lan!("a", "b", "c");
    let key = lan.mesh_key("mesh");
    lan.redis(&b, 6379).who("b").start();
    let announce = |node: &str, specs: &[&str], extra: &[&str]| {
        lan.announce(&b, &key)
            .specs(specs)
            .node(node)
            .bind(7443)
            .args(extra)
            .start()
    };
    // `cache`, the same Redis under another name, has a second instance on C.
    lan.redis(&c, 6379).who("c").start();
    lan.announce(&c, &key)
        .spec("cache:6390=127.0.0.1:6379")
        .bind(7443)
        .start();
    // The mDNS consumer of `redis` (only on B), and a static consumer of `cache` that keeps
    // dialling B and C in turn whatever the records say (so that a new connection during the
    // drain does reach B, meets the refusal, and is retried on C).
    let connect = lan.connect(&a, &key).spec("redis:6379").start();
    let fixed = lan
        .connect(&a, &key)
        .spec("cache:16379")
        .backend(&format!("{}:7443", b.ip))
        .backend(&format!("{}:7443", c.ip))
        .policy("round-robin")
        .node("a-static")
        .start();

    // (a) SIGTERM with one open connection, which the client closes later.
    let b1 = announce("b1", &["redis:6379", "cache:6390=127.0.0.1:6379"], &[]);
    wait_who(&lan, &a, 6379, "b", 15 * SEC);
    wait_who(&lan, &a, 16379, "b", 15 * SEC);
    let both = spread(&lan, &a, 16379, 4);
    assert_eq!(
        both,
        BTreeMap::from([("b".into(), 2), ("c".into(), 2)]),
        "round-robin over B and C before the drain"
    );
    let mut held = Session::open(&lan, &a, "held-1", 6379);
    held.expect_who("b", "before the drain");
    let t0 = Instant::now();
    lan.signal(&b1, "TERM");
    lan.expect_log_line(
        &b1,
        ("draining:", 3 * SEC),
        "open=1",
        (
            "no \"draining:\" line within 3 s of SIGTERM",
            "the drain should wait for exactly the one open connection",
        ),
    );
    assert!(
        lan.wait_log(&connect, "withdrawn by its node", 3 * SEC),
        "A did not see B's withdrawal within 3 s of SIGTERM"
    );
    let withdrawn_after = t0.elapsed();
    // New connections through the static consumer: round-robin sends one of the first two to
    // B, which refuses it; the consumer retries it on C. The client sees no error.
    let during = spread(&lan, &a, 16379, 4);
    assert_eq!(
        during,
        BTreeMap::from([("c".into(), 4)]),
        "new connections during B's drain"
    );
    let refused = ("refused stream", 2 * SEC);
    let why = (
        "B did not log the refused stream",
        "the refusal is not the typed \"draining\" one",
    );
    lan.expect_log_line(&b1, refused, "code=draining", why);
    let retried = lan.log_line(&fixed, "draining");
    assert!(
        retried.contains("trying another"),
        "the static consumer did not retry the \"draining\" refusal elsewhere: {retried:?}"
    );
    // The open connection still works, and writes still land on B.
    held.expect_who("b", "during the drain");
    assert_eq!(
        held.cmd(&["SET", "during-drain", "kept"]).as_deref(),
        Ok("OK")
    );
    assert_eq!(
        redis(&lan, &b, 6379, &["GET", "during-drain"])
            .stdout
            .trim(),
        "kept"
    );
    std::thread::sleep(SEC);
    assert!(
        lan.running(&b1),
        "B stopped while a connection was still open"
    );
    let t_close = Instant::now();
    held.close();
    lan.wait_clean_exit(&b1, 5 * SEC, "B, once its last connection closed");
    let exit_after_close = t_close.elapsed();
    assert!(lan.log(&b1).contains("drained"), "no \"drained\" line");
    assert!(!lan.log(&b1).contains("drain timeout"));
    report(&format!(
        "FIGURE drain: A saw the withdrawal {withdrawn_after:.2?} after SIGTERM; exit 0 {exit_after_close:.2?} after the last connection closed"
    ));

    // (b) SIGINT with --drain-timeout 2s and a connection that stays open.
    let b2 = announce("b2", &["redis:6379"], &["--drain-timeout", "2s"]);
    wait_who(&lan, &a, 6379, "b", 15 * SEC);
    let mut held = Session::open(&lan, &a, "held-2", 6379);
    held.expect_who("b", "before the drain (b)");
    let t0 = Instant::now();
    lan.signal(&b2, "INT");
    assert!(lan.wait_log(&b2, "draining:", 3 * SEC));
    lan.wait_clean_exit(&b2, 10 * SEC, "B with --drain-timeout 2s");
    let took_timeout = t0.elapsed();
    assert!(
        lan.log(&b2).contains("drain timeout"),
        "no \"drain timeout\" line"
    );
    assert!(
        (1800 * MS..6 * SEC).contains(&took_timeout),
        "with --drain-timeout 2s, B exited {took_timeout:?} after SIGINT"
    );
    assert!(
        held.closed_within(5 * SEC),
        "the connection left open was not closed after the drain timeout"
    );

    // (c) A second SIGTERM stops at once.
    let b3 = announce("b3", &["redis:6379"], &[]);
    wait_who(&lan, &a, 6379, "b", 15 * SEC);
    let mut held = Session::open(&lan, &a, "held-3", 6379);
    held.expect_who("b", "before the drain (c)");
    lan.signal(&b3, "TERM");
    assert!(lan.wait_log(&b3, "draining:", 3 * SEC));
    let t0 = Instant::now();
    lan.signal(&b3, "TERM");
    lan.wait_clean_exit(&b3, 5 * SEC, "B after a second SIGTERM");
    let took = t0.elapsed();
    assert!(
        lan.log(&b3).contains("second stop signal"),
        "no \"second stop signal\" line"
    );
    assert!(took < 3 * SEC, "the second signal took {took:?} to stop B");
    assert!(held.closed_within(5 * SEC));
    report(&format!(
        "FIGURE drain: with --drain-timeout 2s B exited {took_timeout:.2?} after SIGINT; a second SIGTERM stopped B in {took:.2?}"
    ));
}

// ---------------------------------------------------------------------------------------------
// 2. Migration under load.

/// A client on the consumer host: `threads` loops of one new connection per request
/// (`GET who`), each connection one JSON line in the results file, until the stop file exists.
const WHO_CLIENT: &str = r#"
import json, os, socket, sys, threading, time

out, stop, nthreads, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
results = open(out, "a", buffering=1)
lock = threading.Lock()

{GET_WHO}
def worker():
    while not os.path.exists(stop):
{RECORD_ONE}

threads = [threading.Thread(target=worker) for _ in range(nthreads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"#;

/// Where the service runs: a host, the announcing node's name, and its Redis port.
struct Site<'a> {
    host: &'a Host,
    node: &'a str,
    port: u16,
}

/// A [`Site`].
fn site<'a>(host: &'a Host, node: &'a str, port: u16) -> Site<'a> {
    Site { host, node, port }
}

/// The service moves from `from` to `to` (start `to`'s announce, wait until the consumer uses
/// it, SIGTERM `from`'s) while two apps on `a` make one connection per request: a
/// redis-benchmark loop (`-k 0`) and a client that records which instance answered each
/// connection. No request fails; no connection started after the drain began reaches `from`;
/// `from`'s Redis gets no connection after its ambassador exited.
fn migrate(lan: &Lan, a: &Host, key: &Path, from: Site, to: Site) {
    lan.redis(from.host, from.port).who(from.node).start();
    lan.redis(to.host, to.port).who(to.node).start();
    let announce = |s: &Site| {
        lan.announce(s.host, key)
            .spec(&format!("redis:6379=127.0.0.1:{}", s.port))
            .node(s.node)
            .start()
    };
    let old = announce(&from);
    let connect = lan.connect(a, key).spec("redis:6379").start();
    wait_who(lan, a, 6379, from.node, 15 * SEC);

    // The apps.
    let script = lan.path("who-client.py");
    fs::write(&script, client_script(WHO_CLIENT)).expect("write the client script");
    let results = lan.path("who-client.jsonl");
    let stop = lan.path("stop");
    let client = lan.spawn(
        a,
        "who-client",
        &[
            "python3",
            script.to_str().unwrap(),
            results.to_str().unwrap(),
            stop.to_str().unwrap(),
            "2",
            "6379",
        ],
    );
    let bench_script = format!(
        "i=0; while [ ! -e '{}' ]; do \
           redis-benchmark -p 6379 -k 0 -c 4 -n 300 -t set,get -q </dev/null || exit 1; \
           i=$((i+1)); echo; echo \"iteration $i done\"; \
         done",
        stop.display()
    );
    let bench = lan.spawn(a, "benchmark", &["sh", "-c", &bench_script]);
    let conns_after = |t: f64, who: &str| {
        read_conns(&results)
            .iter()
            .filter(|c| c.start > t && c.who.as_deref() == Some(who))
            .count()
    };
    assert!(
        wait_until(20 * SEC, 20 * MS, || conns_after(0.0, from.node) >= 50),
        "the client made too few connections to {} before the move: {:?}",
        from.node,
        count_who(&read_conns(&results))
    );

    // The move: start the new instance and let the consumer find it.
    let t_new = now_epoch();
    let new = announce(&to);
    assert!(
        wait_until(20 * SEC, 20 * MS, || conns_after(t_new, to.node) >= 5),
        "the consumer did not use the new instance {} within 20 s",
        to.node
    );
    let found_new = now_epoch() - t_new;
    let iterations_before = lan.log_count(&bench, "done");
    let n0 = connections_received(lan, from.host, from.port);
    let t_term = now_epoch();
    lan.signal(&old, "TERM");
    lan.wait_clean_exit(
        &old,
        15 * SEC,
        "the old instance's ambassador after SIGTERM",
    );
    let n1 = connections_received(lan, from.host, from.port);
    let t_exit = now_epoch();
    // After the move: more connections, and at least one more complete benchmark run.
    assert!(
        wait_until(30 * SEC, 20 * MS, || conns_after(t_exit, to.node) >= 200
            && lan.log_count(&bench, "done") >= iterations_before + 2),
        "the apps did not go on after the move: {:?}, {} benchmark runs",
        count_who(read_conns(&results).iter().filter(|c| c.start > t_exit)),
        lan.log_count(&bench, "done")
    );
    let n2 = connections_received(lan, from.host, from.port);
    fs::write(&stop, "").expect("create the stop file");
    let bench_status = lan.wait_exit(&bench, 60 * SEC);
    let client_status = lan.wait_exit(&client, 60 * SEC);
    let conns = read_conns(&results);

    // When the drain began: the old node stores its draining flag before it logs either line.
    let t_drain = lan
        .first_log_time(&old, "draining:")
        .or_else(|| lan.first_log_time(&old, "stopping:"))
        .expect("the old ambassador logged neither \"draining:\" nor \"stopping:\"");
    let refused = lan.log_count(&old, "code=draining");
    let after_drain: Vec<&Conn> = conns.iter().filter(|c| c.start > t_drain).collect();
    let bench_log = lan.log(&bench);
    let runs = lan.log_count(&bench, "done");
    report(&format!(
        "FIGURE migration {}→{}: new instance used {found_new:.2}s after its start; drain began {:.3}s after SIGTERM, \
         exit after {:.2}s ({refused} streams refused with \"draining\" and retried); {} client connections {:?}, \
         after the drain began {:?}; {runs} redis-benchmark runs (-k 0); old Redis got {} connections from just before SIGTERM to the exit, {} after the exit",
        from.node,
        to.node,
        t_drain - t_term,
        t_exit - t_term,
        conns.len(),
        count_who(&conns),
        count_who(after_drain.iter().copied()),
        n1 - n0 - 1,
        n2 - n1 - 1,
    ));
    assert_no_failure(&conns, "the client");
    assert_eq!(
        client_status.map(|s| s.success()),
        Some(true),
        "the client: {}",
        lan.log(&client)
    );
    assert_eq!(
        bench_status.map(|s| s.success()),
        Some(true),
        "a redis-benchmark run failed: {bench_log}"
    );
    for l in bench_log.split(['\r', '\n']) {
        let lower = l.to_lowercase();
        assert!(
            !lower.contains("error") && !lower.contains("could not") && !lower.contains("closed"),
            "redis-benchmark reported: {l}"
        );
    }
    assert!(
        after_drain.len() >= 200
            && after_drain
                .iter()
                .all(|c| c.who.as_deref() == Some(to.node)),
        "connections started after the drain began went to {:?}",
        count_who(after_drain.iter().copied())
    );
    assert_eq!(
        n2 - n1 - 1,
        0,
        "{}'s Redis received connections after its ambassador exited",
        from.node
    );
    // The goodbye reaches browsers as a removal after about a second.
    assert!(
        lan.wait_log(&connect, "withdrawn by its node", 5 * SEC),
        "the consumer never saw the old instance withdrawn"
    );
    assert!(lan.running(&new));
}

/// Point 2a: Redis moves from host B to host C under load: no failed request, new connections on C.
#[test]
fn migration_to_another_host_loses_no_request() {
    let (lan, [a, b, c]) = lan!("a", "b", "c");
    let key = lan.mesh_key("mesh");
    migrate(&lan, &a, &key, site(&b, "b", 6379), site(&c, "c", 6379));
}

/// Point 2b: Only the target port changes on host B (two announcing nodes on B: the old port 6379,
/// the new port 6380), under load: no failed request, new connections on the new port.
#[test]
fn migration_to_another_port_loses_no_request() {
    let (lan, [a, b]) = lan!("a", "b");
    let key = lan.mesh_key("mesh");
    let (old, new) = (site(&b, "b-6379", 6379), site(&b, "b-6380", 6380));
    migrate(&lan, &a, &key, old, new);
}

// ---------------------------------------------------------------------------------------------
// 3. DNS SRV discovery.

/// Starts dnsmasq on `host`:53 answering only `records` (with TTL `ttl` seconds), logging
/// every query; waits until it listens.
fn dnsmasq(lan: &Lan, host: &Host, label: &str, ttl: u32, records: &[String]) -> Proc {
    let listen = format!("--listen-address={}", host.ip);
    let ttl = format!("--local-ttl={ttl}");
    let mut args = vec![
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--port=53",
        &listen,
        "--bind-interfaces",
        &ttl,
        "--pid-file=",
        "--user=root",
        "--log-facility=-",
        "--log-queries",
    ];
    args.extend(records.iter().map(String::as_str));
    let p = lan.spawn(host, label, &args);
    assert!(
        lan.wait_udp_listen(host, 53, 10 * SEC),
        "dnsmasq on {} did not listen: {}",
        host.name,
        lan.log(&p)
    );
    p
}

/// The SRV and address records of one phase: the ambassador service `_redis._tcp` at
/// `mesh` (QUIC port 7443) and the plain service `_redisd._tcp` at `direct` (Redis port 6379).
fn srv_records(mesh: &[&Host], direct: &[&Host]) -> Vec<String> {
    let mut out = Vec::new();
    let mut hosts: Vec<&Host> = mesh.iter().chain(direct).copied().collect();
    hosts.sort_by_key(|h| h.name.clone());
    hosts.dedup_by_key(|h| h.name.clone());
    for h in hosts {
        out.push(format!("--host-record={}.example.lan,{}", h.name, h.ip));
    }
    for h in mesh {
        out.push(format!(
            "--srv-host=_redis._tcp.example.lan,{}.example.lan,7443,0,1",
            h.name
        ));
    }
    for h in direct {
        out.push(format!(
            "--srv-host=_redisd._tcp.example.lan,{}.example.lan,6379,0,1",
            h.name
        ));
    }
    out
}

/// Point 3: Backends from DNS SRV records served by dnsmasq, for ambassador peers (flags) and
/// for `--direct` TCP backends (a `run -c` file). The records move from B to C during the
/// test: new connections follow within seconds, connections open before the change stay on B
/// and keep working. Records with TTL 0 are re-resolved no faster than the 1 s floor. A record
/// naming a host of another mesh is never used (its identity is checked).
#[test]
fn dns_srv_records_changed_during_the_test_are_followed() {
    let (lan, [a, b, c, d, e]) = lan!("a", "b", "c", "d", "e");
    let key = lan.mesh_key("mesh");
    let rogue_key = lan.mesh_key("rogue");
    for (h, k) in [(&b, &key), (&c, &key), (&e, &rogue_key)] {
        lan.redis(h, 6379).lan_too().who(&h.name).start();
        lan.announce(h, k).spec("redis:6379").bind(7443).start();
    }
    let mut dns = dnsmasq(&lan, &d, "dnsmasq-1", 1, &srv_records(&[&b], &[&b]));
    let dns_server = format!("{}:53", d.ip);
    let mesh = lan
        .connect(&a, &key)
        .spec("redis:6379")
        .args(&["--discover", "dns-srv:_redis._tcp.example.lan"])
        .args(&["--dns-server", &dns_server])
        .node("a-mesh")
        .start();
    let config = lan.path("srv.toml");
    fs::write(
        &config,
        format!(
            "mesh_key_file = \"{}\"\nnode = \"a-direct\"\n\n[connect.redisd]\nport = 6390\n\
             discover = \"dns-srv:_redisd._tcp.example.lan\"\ndns_server = \"{dns_server}\"\n\
             direct = true\n",
            key.display()
        ),
    )
    .expect("write the config file");
    let direct = lan.ambassador(&a, "run-a-direct", &["run", "-c", config.to_str().unwrap()]);
    wait_who(&lan, &a, 6379, "b", 15 * SEC);
    wait_who(&lan, &a, 6390, "b", 15 * SEC);
    assert!(lan.log(&mesh).contains("SRV backends changed"));
    assert!(lan.log(&direct).contains("SRV backends changed"));
    let mut held_mesh = Session::open(&lan, &a, "held-mesh", 6379);
    let mut held_direct = Session::open(&lan, &a, "held-direct", 6390);
    held_mesh.expect_who("b", "before the change");
    held_direct.expect_who("b", "before the change");

    // The records move to C (dnsmasq restarted with other records).
    lan.signal(&dns, "TERM");
    assert!(
        lan.wait_exit(&dns, 5 * SEC).is_some(),
        "dnsmasq did not stop"
    );
    let t0 = Instant::now();
    dns = dnsmasq(&lan, &d, "dnsmasq-2", 0, &srv_records(&[&c], &[&c]));
    wait_who(&lan, &a, 6379, "c", 10 * SEC);
    let mesh_moved = t0.elapsed();
    wait_who(&lan, &a, 6390, "c", 10 * SEC);
    let direct_moved = t0.elapsed();
    report(&format!(
        "FIGURE DNS SRV change B→C (dnsmasq restarted): new connections on C after {mesh_moved:.2?} (mesh), {direct_moved:.2?} (direct)"
    ));
    assert!(
        direct_moved < 6 * SEC,
        "the SRV change took {direct_moved:?} to be followed"
    );
    // Every new connection now goes to C; the open ones stay on B and keep working.
    for port in [6379, 6390] {
        let counts = spread(&lan, &a, port, 10);
        assert_eq!(
            counts,
            BTreeMap::from([("c".to_string(), 10)]),
            "port {port} after the change"
        );
    }
    held_mesh.expect_who("b", "after the change");
    held_direct.expect_who("b", "after the change");
    assert_eq!(
        held_mesh.cmd(&["SET", "via", "held-mesh"]).as_deref(),
        Ok("OK")
    );
    assert_eq!(
        held_direct.cmd(&["SET", "via2", "held-direct"]).as_deref(),
        Ok("OK")
    );
    assert_eq!(
        redis(&lan, &b, 6379, &["GET", "via"]).stdout.trim(),
        "held-mesh"
    );
    assert_eq!(
        redis(&lan, &b, 6379, &["GET", "via2"]).stdout.trim(),
        "held-direct"
    );

    // These records have TTL 0: each consumer re-resolves once a second (the floor), neither
    // more often nor less.
    let ttl0 = ("TTL 0", "one a second");
    assert_srv_queries(&lan, &dns, ttl0, Duration::from_secs(4), 2..=6);
    lan.signal(&dns, "TERM");
    assert!(
        lan.wait_exit(&dns, 5 * SEC).is_some(),
        "dnsmasq did not stop"
    );

    // A record naming a node of another mesh, next to C's: never used. (TTL 3 s now.)
    let records = srv_records(&[&c, &e], &[&c]);
    let dns = lan
        .logs_after(&mesh, "SRV backends changed", 10 * SEC, || {
            dnsmasq(&lan, &d, "dnsmasq-3", 3, &records)
        })
        .expect("the consumer did not pick up the records of C and E");
    let counts = spread(&lan, &a, 6379, 20);
    assert_eq!(
        counts,
        BTreeMap::from([("c".to_string(), 20)]),
        "with E (another mesh) in the records"
    );
    assert!(
        lan.log(&mesh).contains("peer failed the mesh handshake"),
        "the consumer never tried (and rejected) E"
    );
    // With TTL 3 s, re-resolution follows the TTL: about one query in 3 s, not one a second.
    let ttl3 = ("TTL 3 s", "one in 3 s");
    assert_srv_queries(&lan, &dns, ttl3, Duration::from_secs(6), 1..=3);
}

/// Counts the SRV queries for each of the two services that dnsmasq `dns` logs during
/// `window` (a measurement: the window is slept through): `expected` for each. `ttl` names the
/// records' TTL and the rate it should give, for the figure and the failure message.
fn assert_srv_queries(
    lan: &Lan,
    dns: &Proc,
    (ttl, rate): (&str, &str),
    window: Duration,
    expected: std::ops::RangeInclusive<usize>,
) {
    let names = ["_redis._tcp.example.lan", "_redisd._tcp.example.lan"];
    let queries = |name: &str| lan.log_count(dns, &format!("query[SRV] {name} from"));
    let before: Vec<usize> = names.iter().map(|n| queries(n)).collect();
    std::thread::sleep(window);
    for (name, before) in names.iter().zip(before) {
        let n = queries(name) - before;
        report(&format!(
            "FIGURE SRV records with {ttl}: {n} queries for {name} in {window:?}"
        ));
        assert!(
            expected.contains(&n),
            "{n} SRV queries for {name} in {window:?} with {ttl} (expected {rate})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Static backends and reload.

fn write_run_config(path: &Path, key: &Path, mesh: &[String], direct: &[String]) {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "mesh_key_file = \"{}\"\n\n[connect.redis]\nport = 6400\nbackends = [{}]\n\n[connect.redisd]\nport = 6401\nbackends = [{}]\ndirect = true\n",
        key.display(),
        list(mesh),
        list(direct)
    );
    fs::write(path, text).expect("write the config file");
}

/// Point 4: Static backends: `--backend` (ambassador peers, and plain TCP with `--direct`), and
/// `run -c FILE` with `[connect.*]` sections that SIGHUP reloads: changed backends apply to new
/// connections, open connections are kept; a bad file is refused and the old backends stay.
#[test]
fn static_backends_and_sighup_reload() {
    let (lan, [a, b, c]) = lan!("a", "b", "c");
    let key = lan.mesh_key("mesh");
    for h in [&b, &c] {
        lan.redis(h, 6379).lan_too().who(&h.name).start();
        lan.announce(h, &key).spec("redis:6379").bind(7443).start();
    }
    let quic = |h: &Host| format!("{}:7443", h.ip);
    let tcp = |h: &Host| format!("{}:6379", h.ip);

    // Flags.
    lan.connect(&a, &key)
        .spec("redis:6379")
        .backend(&quic(&b))
        .node("a1")
        .label("connect-a-flag-mesh")
        .start();
    lan.connect(&a, &key)
        .spec("redisd:6390")
        .args(&["--direct"])
        .backend(&tcp(&c))
        .node("a2")
        .label("connect-a-flag-direct")
        .start();
    wait_who(&lan, &a, 6379, "b", 15 * SEC);
    wait_who(&lan, &a, 6390, "c", 15 * SEC);
    assert_eq!(
        spread(&lan, &a, 6379, 10),
        BTreeMap::from([("b".into(), 10)])
    );
    assert_eq!(
        spread(&lan, &a, 6390, 10),
        BTreeMap::from([("c".into(), 10)])
    );

    // A file, reloaded on SIGHUP.
    let config = lan.path("run.toml");
    write_run_config(&config, &key, &[quic(&b)], &[tcp(&b)]);
    let run = lan.ambassador(
        &a,
        "run-a",
        &["run", "-c", config.to_str().unwrap(), "--node", "a3"],
    );
    wait_who(&lan, &a, 6400, "b", 15 * SEC);
    wait_who(&lan, &a, 6401, "b", 15 * SEC);
    let mut held_mesh = Session::open(&lan, &a, "held-mesh", 6400);
    let mut held_direct = Session::open(&lan, &a, "held-direct", 6401);
    held_mesh.expect_who("b", "before the reload");
    held_direct.expect_who("b", "before the reload");

    let reload = |what: &str| {
        let before = lan.log_count(&run, "backends reloaded");
        lan.signal(&run, "HUP");
        assert!(
            lan.wait_log_more(&run, "backends reloaded", before + 1, 5 * SEC)
                .is_some(),
            "{what}: no \"backends reloaded\" for both sections within 5 s"
        );
    };
    write_run_config(&config, &key, &[quic(&c)], &[tcp(&c)]);
    reload("B → C");
    for port in [6400, 6401] {
        assert_eq!(
            spread(&lan, &a, port, 10),
            BTreeMap::from([("c".into(), 10)]),
            "port {port} after the reload to C"
        );
    }
    held_mesh.expect_who("b", "after the reload");
    held_direct.expect_who("b", "after the reload");
    assert_eq!(held_mesh.cmd(&["SET", "kept", "mesh"]).as_deref(), Ok("OK"));
    assert_eq!(
        redis(&lan, &b, 6379, &["GET", "kept"]).stdout.trim(),
        "mesh"
    );

    // Both: new connections spread over both.
    write_run_config(&config, &key, &[quic(&b), quic(&c)], &[tcp(&b), tcp(&c)]);
    reload("B and C");
    for port in [6400, 6401] {
        let counts = spread(&lan, &a, port, 30);
        assert!(
            counts.len() == 2 && counts.contains_key("b") && counts.contains_key("c"),
            "port {port} with both backends: {counts:?}"
        );
    }

    // A bad file: refused, the backends stay.
    fs::write(
        &config,
        format!(
            "mesh_key_file = \"{}\"\n[connect.redis]\nport = 6400\nbackends = [\"not an address\"]\n",
            key.display()
        ),
    )
    .expect("write the bad config");
    let hup = || lan.signal(&run, "HUP");
    let refused = lan.logs_after(&run, "not reloaded", 5 * SEC, hup);
    assert!(refused.is_some(), "a bad file was not refused");
    let counts = spread(&lan, &a, 6400, 20);
    assert_eq!(
        counts.values().sum::<usize>(),
        20,
        "after a bad reload: {counts:?}"
    );
    assert!(counts.len() == 2, "after a bad reload: {counts:?}");
    assert!(lan.running(&run), "a bad reload stopped the node");
    held_direct.expect_who("b", "after three reloads");
}

// ---------------------------------------------------------------------------------------------
// 5. Docker link variables.

/// Point 5: `connect --from-env` with the full set of variables Docker sets for two links
/// (`--link redis:redis --link cache:cache`): listens on each linked port and forwards it
/// directly to the linked address; `--listen-ip 0.0.0.0` serves other hosts; a malformed link
/// variable is a usage error (exit 2).
#[test]
fn docker_link_variables_are_forwarded() {
    let (lan, [a, b, c]) = lan!("a", "b", "c");
    let key = lan.mesh_key("mesh");
    lan.redis(&b, 6379).lan_too().who("b").start();
    lan.redis(&c, 6380).lan_too().who("c").start();
    // What `docker run --link NAME:ALIAS` sets for a port of the linked container (the classic
    // ambassador got these with the target's address and port).
    let docker_vars = |alias: &str, port: u16, target: &str| -> Vec<String> {
        let up = alias.to_uppercase();
        let p = format!("{up}_PORT_{port}_TCP");
        let (addr, tport) = target.rsplit_once(':').unwrap();
        vec![
            format!("{up}_NAME=/web/{alias}"),
            format!("{up}_PORT=tcp://{target}"),
            format!("{p}=tcp://{target}"),
            format!("{p}_ADDR={addr}"),
            format!("{p}_PORT={tport}"),
            format!("{p}_PROTO=tcp"),
            format!("{up}_ENV_REDIS_VERSION=7.0.15"),
        ]
    };
    let mut vars = docker_vars("redis", 6379, &format!("{}:6379", b.ip));
    vars.extend(docker_vars("cache", 6380, &format!("{}:6380", c.ip)));
    // `connect --from-env` as node `node`, run under `env VARS...`.
    let with_env = |node: &str, vars: &[String]| {
        let mut env = vec!["env"];
        env.extend(vars.iter().map(String::as_str));
        lan.connect(&a, &key)
            .under(&env)
            .node(node)
            .args(&["--from-env"])
    };
    let connect = with_env("a", &vars).start();
    wait_who(&lan, &a, 6379, "b", 10 * SEC);
    wait_who(&lan, &a, 6380, "c", 10 * SEC);
    set(&lan, &a, 6379, "linked", "yes");
    assert_eq!(
        redis(&lan, &b, 6379, &["GET", "linked"]).stdout.trim(),
        "yes"
    );
    // Plain TCP straight from A: B's Redis sees A's address (not a local ambassador's).
    let info = redis(&lan, &a, 6379, &["CLIENT", "INFO"]);
    assert!(
        info.stdout.contains(&format!("addr={}:", a.ip))
            && info.stdout.contains(&format!("laddr={}:6379", b.ip)),
        "B's Redis does not see a direct connection from A: {info:?}"
    );
    // Loopback only by default.
    let outside = redis_remote(&lan, &c, &a.ip.to_string(), 6379, &["PING"]);
    assert!(
        !outside.stdout.contains("PONG"),
        "the default listener is reachable from another host: {outside:?}"
    );
    let log = lan.log(&connect);
    assert!(
        log.contains("127.0.0.1:6379") && log.contains("127.0.0.1:6380"),
        "listeners not logged: {log}"
    );

    // A container's ambassador serving other containers: --listen-ip 0.0.0.0.
    // The listen port is the variable's; the target's port may differ.
    let vars = docker_vars("db", 6381, &format!("{}:6379", b.ip));
    with_env("a-any", &vars)
        .args(&["--listen-ip", "0.0.0.0"])
        .start();
    assert!(lan.wait_tcp_listen(&a, 6381, 10 * SEC));
    let remote = redis_remote(&lan, &c, &a.ip.to_string(), 6381, &["GET", "who"]);
    assert_eq!(
        remote.stdout.trim(),
        "b",
        "from C through A:6381: {remote:?}"
    );

    // A malformed link variable.
    let bad = [format!("REDIS_PORT_6379_TCP=udp://{}:6379", b.ip)];
    let out = with_env("a-bad", &bad).run();
    out.assert_refused(&["REDIS_PORT_6379_TCP"], "a malformed link variable");
}

// ---------------------------------------------------------------------------------------------
// 6. avahi interoperability.

/// An avahi-daemon on a host, with its private system bus (`None` without D-Bus).
struct Avahi {
    bus: Option<String>,
}

impl Avahi {
    /// Starts (optionally) a private D-Bus system bus and avahi-daemon on `host`, for
    /// `interfaces`; with `reflector`, avahi reflects mDNS between them.
    fn start(lan: &Lan, host: &Host, interfaces: &str, reflector: bool, dbus: bool) -> Avahi {
        let name = &host.name;
        let bus = dbus.then(|| {
            let socket = lan.path(&format!("bus-{name}"));
            let conf = lan.path(&format!("bus-{name}.conf"));
            fs::write(
                &conf,
                format!(
                    r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                    socket.display()
                ),
            )
            .expect("write the bus config");
            let p = lan.spawn(
                host,
                &format!("dbus-{name}"),
                &[
                    "dbus-daemon",
                    &format!("--config-file={}", conf.display()),
                    "--nofork",
                    "--nopidfile",
                ],
            );
            assert!(
                wait_until(10 * SEC, 10 * MS, || socket.exists()),
                "dbus-daemon on {name} did not start: {}",
                lan.log(&p)
            );
            format!("unix:path={}", socket.display())
        });
        let conf = lan.path(&format!("avahi-{name}.conf"));
        fs::write(
            &conf,
            format!(
                "[server]\nhost-name=avahi-{name}-{id}\nuse-ipv4=yes\nuse-ipv6=no\n\
                 allow-interfaces={interfaces}\nenable-dbus={dbus}\n\
                 ratelimit-interval-usec=1000000\nratelimit-burst=1000\n\
                 [wide-area]\nenable-wide-area=no\n\
                 [publish]\npublish-hinfo=no\npublish-workstation=no\n\
                 [reflector]\nenable-reflector={reflector}\n",
                id = lan.id,
                dbus = if dbus { "yes" } else { "no" },
                reflector = if reflector { "yes" } else { "no" },
            ),
        )
        .expect("write the avahi config");
        // A private /run (pid file, socket): the machine's own avahi, or another namespace's,
        // must not be taken for this one.
        let script =
            "mount -t tmpfs tmpfs /run && exec avahi-daemon --no-drop-root --no-chroot -f \"$0\"";
        let bus_env = format!(
            "DBUS_SYSTEM_BUS_ADDRESS={}",
            bus.as_deref().unwrap_or("unix:path=/nonexistent")
        );
        let p = lan.spawn(
            host,
            &format!("avahi-{name}"),
            &[
                "env",
                &bus_env,
                "unshare",
                "-m",
                "sh",
                "-c",
                script,
                conf.to_str().unwrap(),
            ],
        );
        assert!(
            lan.wait_log(&p, "Server startup complete", 15 * SEC),
            "avahi-daemon on {name} did not start: {}",
            lan.log(&p)
        );
        Avahi { bus }
    }

    /// `env DBUS_SYSTEM_BUS_ADDRESS=... ARGS...`: an avahi tool talking to this daemon.
    fn tool_args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec![format!(
            "DBUS_SYSTEM_BUS_ADDRESS={}",
            self.bus.as_deref().expect("this avahi has no D-Bus")
        )];
        all.extend(args.iter().map(|s| s.to_string()));
        all
    }

    fn run(&self, lan: &Lan, host: &Host, args: &[&str]) -> Out {
        let tail = self.tool_args(args);
        let mut all = vec!["env"];
        all.extend(tail.iter().map(String::as_str));
        lan.run(host, 15 * SEC, &all)
    }

    fn spawn(&self, lan: &Lan, host: &Host, label: &str, args: &[&str]) -> Proc {
        let tail = self.tool_args(args);
        let mut all = vec!["env"];
        all.extend(tail.iter().map(String::as_str));
        lan.spawn(host, label, &all)
    }
}

/// One resolved line of `avahi-browse -p -r`: instance, host name, address, port, TXT.
#[derive(Debug, Clone)]
struct Browsed {
    instance: String,
    address: String,
    port: u16,
    txt: BTreeMap<String, String>,
}

/// Parses the resolved (`=`) lines of `avahi-browse -prt` (instance names unescaped).
fn parse_browse(out: &str) -> Vec<Browsed> {
    let unescape = |s: &str| {
        let mut r = String::new();
        let mut chars = s.chars().peekable();
        while let Some(ch) = chars.next() {
            match (ch, chars.peek()) {
                ('\\', Some(d)) if d.is_ascii_digit() => {
                    let digits: String = (0..3).filter_map(|_| chars.next()).collect();
                    r.push(digits.parse::<u8>().map_or('?', char::from));
                }
                ('\\', Some(_)) => r.extend(chars.next()),
                _ => r.push(ch),
            }
        }
        r
    };
    out.lines()
        .filter(|l| l.starts_with("=;"))
        .filter_map(|l| {
            let f: Vec<&str> = l.splitn(10, ';').collect();
            if f.len() < 10 {
                return None;
            }
            let txt = f[9]
                .split("\" \"")
                .map(|kv| kv.trim_matches('"'))
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Some(Browsed {
                instance: unescape(f[3]),
                address: f[7].to_string(),
                port: f[8].parse().ok()?,
                txt,
            })
        })
        .collect()
}

/// Point 6a/6b: avahi-browse (avahi-daemon in its own namespace) lists every announced service with
/// its TXT keys; a plain `_redis._tcp` service published by avahi-publish is usable with
/// `connect --direct --discover mdns:_redis._tcp`, and its withdrawal is followed.
#[test]
fn avahi_browses_announcements_and_publishes_a_plain_service() {
    let (lan, [a, b, c, v]) = lan!("a", "b", "c", "v");
    let key = lan.mesh_key("mesh");
    lan.redis(&b, 6379).who("b").start();
    // B: redis (up) with weight 3, and `cache` whose target does not answer (h=down).
    lan.announce(&b, &key)
        .specs(&["redis:6379", "cache:6380"])
        .args(&["--weight", "3"])
        .start();
    lan.redis(&c, 6379).who("c").start();
    lan.announce(&c, &key).spec("redis:6379").start();
    let avahi = Avahi::start(&lan, &v, &v.ifname, false, true);

    let want = ["redis@b", "cache@b", "redis@c"];
    // Instance names are `svc@node_<mesh8>`.
    let base = |i: &str| i.rsplit_once('_').map_or(i, |(b, _)| b).to_string();
    let mut seen = Vec::new();
    let all = wait_until(20 * SEC, 200 * MS, || {
        let out = avahi.run(&lan, &v, &["avahi-browse", "-rpt", "_ambassador._udp"]);
        seen = parse_browse(&out.stdout);
        want.iter().all(|w| {
            seen.iter()
                .any(|s| base(&s.instance) == *w && !s.txt.is_empty())
        })
    });
    assert!(all, "avahi-browse on V shows {seen:#?}, expected {want:?}");
    // What the nodes say of themselves.
    let node = |name: &str| {
        node_status(&lan, &b, name).unwrap_or_else(|| panic!("status lists no node {name}"))
    };
    let quic_port = |name: &str| -> u16 {
        node(name)["quic"]
            .as_str()
            .and_then(|q| q.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .expect("quic port in status")
    };
    let mesh_id = node("b")["mesh"].as_str().unwrap().to_string();
    let ls = ls_json(&lan, &a, &["--mesh-key-file", key.to_str().unwrap()]);
    let fingerprint = |node: &str| {
        ls.iter()
            .find(|r| r["node"] == node)
            .and_then(|r| r["fingerprint"].as_str())
            .map(str::to_string)
    };
    for (inst, host, svc, port, weight, health) in [
        ("redis@b", &b, "redis", "6379", "3", "up"),
        ("cache@b", &b, "cache", "6380", "3", "down"),
        ("redis@c", &c, "redis", "6379", "1", "up"),
    ] {
        let r = seen.iter().find(|s| base(&s.instance) == inst).unwrap();
        assert_eq!(
            r.instance,
            format!("{inst}_{}", &mesh_id[..8]),
            "instance name of {inst}"
        );
        let t = &r.txt;
        let get = |k: &str| t.get(k).map(String::as_str);
        assert_eq!(get("v"), Some("1"), "{inst}: TXT {t:?}");
        assert_eq!(get("svc"), Some(svc), "{inst}: TXT {t:?}");
        assert_eq!(get("port"), Some(port), "{inst}: TXT {t:?}");
        assert_eq!(get("node"), Some(host.name.as_str()), "{inst}: TXT {t:?}");
        assert_eq!(get("mesh"), Some(mesh_id.as_str()), "{inst}: TXT {t:?}");
        assert_eq!(get("w"), Some(weight), "{inst}: TXT {t:?}");
        assert_eq!(get("h"), Some(health), "{inst}: TXT {t:?}");
        let id = get("id").unwrap_or_default();
        assert!(
            id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{inst}: id {id:?}"
        );
        if let Some(fp) = fingerprint(&host.name) {
            assert_eq!(id, fp, "{inst}: avahi's id differs from ls's fingerprint");
        }
        assert_eq!(r.address, host.ip.to_string(), "{inst}: address");
        assert_eq!(r.port, quic_port(&host.name), "{inst}: SRV port");
    }
    report(&format!(
        "FIGURE avahi-browse -rpt _ambassador._udp: {} resolved entries, TXT of redis@b: {:?}",
        seen.len(),
        seen.iter()
            .find(|s| base(&s.instance) == "redis@b")
            .unwrap()
            .txt
    ));

    // A plain _redis._tcp service published by avahi on V.
    lan.redis(&v, 6379).lan_too().who("v").start();
    let publish = avahi.spawn(
        &lan,
        &v,
        "avahi-publish",
        &["avahi-publish", "-s", "myredis", "_redis._tcp", "6379"],
    );
    assert!(
        lan.wait_log(&publish, "Established under name", 10 * SEC),
        "avahi-publish failed: {}",
        lan.log(&publish)
    );
    let connect = lan
        .connect(&a, &key)
        .spec("redis:6379")
        .args(&["--direct", "--discover", "mdns:_redis._tcp"])
        .start();
    let took = wait_who(&lan, &a, 6379, "v", 15 * SEC);
    assert_eq!(spread(&lan, &a, 6379, 5), BTreeMap::from([("v".into(), 5)]));
    // Withdrawn by avahi-publish's exit: followed.
    lan.signal(&publish, "TERM");
    assert!(
        wait_until(10 * SEC, 20 * MS, || lan
            .log(&connect)
            .contains("DNS-SD backends changed instances=0")),
        "the consumer did not follow the withdrawal: {}",
        lan.log(&connect)
    );
    report(&format!(
        "FIGURE avahi-publish'd _redis._tcp reached through connect --direct after {took:.2?}"
    ));
}

/// Point 6c: Two subnets joined by a router namespace running avahi-daemon with `enable-reflector`:
/// a consumer on one subnet finds a provider on the other (which it cannot see without the
/// reflector) and reaches it through the mesh, routed by the router.
#[test]
fn avahi_reflector_carries_announcements_across_subnets() {
    let (lan, [a, r, b]) = lan!("a", "r", "b");
    let key = lan.mesh_key("mesh");
    // B moves to its own bridge and subnet 10.78.X.0/24; R gets a second interface there.
    let x = a.ip.octets()[2];
    let far_net = format!("10.78.{x}.0/24");
    let near_net = format!("10.77.{x}.0/24");
    let r_far = Ipv4Addr::new(10, 78, x, 1);
    let b_ip = Ipv4Addr::new(10, 78, x, 10);
    let sw = lan.switch_ns().to_string();
    ip_in(&sw, "link add br1 type bridge");
    ip_in(&sw, "link set br1 up");
    ip_in(&sw, &format!("link set {} nomaster", b.port));
    ip_in(&sw, &format!("link set {} master br1", b.port));
    ip_in(
        &sw,
        &format!("link add q1 type veth peer name eth1 netns {}", r.ns),
    );
    ip_in(&sw, "link set q1 master br1");
    ip_in(&sw, "link set q1 up");
    ip_in(&r.ns, &format!("addr add {r_far}/24 dev eth1"));
    ip_in(&r.ns, "link set eth1 up");
    lan.must_run(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    ip_in(&b.ns, &format!("addr flush dev {}", b.ifname));
    ip_in(&b.ns, &format!("addr add {b_ip}/24 dev {}", b.ifname));
    ip_in(
        &b.ns,
        &format!("route replace 224.0.0.0/4 dev {}", b.ifname),
    );
    ip_in(&b.ns, &format!("route add {near_net} via {r_far}"));
    ip_in(&a.ns, &format!("route add {far_net} via {}", r.ip));
    let b_far = Host {
        ip: b_ip,
        ..b.clone()
    };
    // Routed, not bridged: A reaches B through R.
    let ping = redis_remote(&lan, &a, &b_ip.to_string(), 9, &["PING"]);
    assert!(
        format!("{}{}", ping.stdout, ping.stderr).contains("refused"),
        "A cannot reach B across R: {ping:?}"
    );

    lan.redis(&b_far, 6379).who("b").start();
    lan.announce(&b_far, &key).spec("redis:6379").start();
    let ls_a = || {
        let args = ["--timeout", "2s", "--mesh-key-file", key.to_str().unwrap()];
        ls_json(&lan, &a, &args)
    };
    // Without the reflector, A does not see B.
    let before = ls_a();
    assert_eq!(
        before.len(),
        0,
        "A sees B's subnet without a reflector: {before:?}"
    );

    Avahi::start(&lan, &r, "eth0,eth1", true, false);
    let t0 = Instant::now();
    lan.connect(&a, &key).spec("redis").start();
    // The listen port comes from B's reflected record.
    assert!(
        lan.wait_tcp_listen(&a, 6379, 15 * SEC),
        "A never learned redis's port through the reflector"
    );
    wait_who(&lan, &a, 6379, "b", 15 * SEC);
    let took = t0.elapsed();
    set(&lan, &a, 6379, "across", "subnets");
    assert_eq!(
        redis(&lan, &b_far, 6379, &["GET", "across"]).stdout.trim(),
        "subnets"
    );
    // A second browser on A's subnet: avahi 0.8's reflector puts the records it has cached
    // into the queries it reflects as known answers, so B stays silent, and it answers a
    // repeated question from its cache only once a second: a browser that starts just after
    // another may see nothing in its first seconds. Poll.
    let mut after = Vec::new();
    let mut attempts = 0;
    let seen = wait_until(20 * SEC, 10 * MS, || {
        attempts += 1;
        after = ls_a();
        after.iter().any(|r| r["node"] == "b")
    });
    assert!(seen, "ls on A through the reflector: {after:?}");
    let row = after.iter().find(|r| r["node"] == "b").unwrap();
    assert_eq!(row["addrs"][0].as_str(), Some(b_ip.to_string().as_str()));
    assert_eq!(row["mesh_match"].as_bool(), Some(true));
    report(&format!(
        "FIGURE avahi reflector: A ({}) reached B ({b_ip}) across R {took:.2?} after connect started; \
         `ls` (2 s each) listed B at attempt {attempts}",
        a.ip
    ));
}
