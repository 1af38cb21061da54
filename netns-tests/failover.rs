//! Fail-over, load balancing and health across hosts (issue 3, point 7 a–d): several providers
//! of one service, and a consumer whose clients must never see an instance die.
//!
//! Faults (a killed ambassador, a killed Redis, a cut link) are injected while client loops run
//! on the consumer host, between two of their connections: every loop pauses at a gate for the
//! instant of the injection (a few milliseconds). A connection that already handed bytes to the
//! failing host cannot be saved by any proxy (its commands may have run there); what these tests
//! claim is that no connection made after the fault fails, and how long the worst one waits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{Host, Lan, Proc, SEC, now_epoch, report, wait_until};
use crate::nodes::{
    ClientLoop, Conn, assert_no_failure, consumer_view, count_who, ls_rows, spread,
    wait_all_answer, wait_health, wait_target_up, worst,
};

/// The consumer's default `--peer-timeout`, which the tests rely on (not passed explicitly, so
/// the documented default is what is measured).
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// Starts Redis on `host`:6379 holding `who` = the host's name, and `ambassador announce` of it
/// (node = the host's name, plus `extra` options).
fn provider(lan: &Lan, host: &Host, key: &Path, extra: &[&str]) -> (Proc, Proc) {
    let redis = lan.redis(host, 6379).who(&host.name).start();
    let announce = lan
        .announce(host, key)
        .spec("redis:6379")
        .args(extra)
        .start();
    (redis, announce)
}

/// The set-up of tests b–d: providers of `redis` on B and C (with `extra` announce options),
/// and its consumer (node `a`) on A, which has had answers from both.
struct Pair {
    key: PathBuf,
    redis_b: Proc,
    announce_b: Proc,
    connect: Proc,
}

impl Pair {
    fn start(lan: &Lan, [a, b, c]: [&Host; 3], extra: &[&str]) -> Pair {
        let key = lan.mesh_key("mesh");
        let (redis_b, announce_b) = provider(lan, b, &key, extra);
        provider(lan, c, &key, extra);
        let connect = lan.connect(a, &key).spec("redis").start();
        wait_all_answer(lan, a, 6379, &["b", "c"], 20 * SEC);
        Pair {
            key,
            redis_b,
            announce_b,
            connect,
        }
    }
}

/// How many peer connections consumer `connect` has lost so far.
fn lost_peers(lan: &Lan, connect: &Proc) -> usize {
    lan.log_count(connect, "peer connection lost")
}

/// Waits (up to the peer timeout and 10 s more) until consumer `connect` has lost more peer
/// connections than `before`; returns when (epoch seconds). The loss is an event of the
/// consumer's, seen in its log: its status shows only that the instance is ejected, which a
/// hedged attempt makes it for a moment too.
fn wait_peer_lost(lan: &Lan, connect: &Proc, before: usize) -> Option<f64> {
    lan.wait_log_more(
        connect,
        "peer connection lost",
        before,
        PEER_TIMEOUT + 10 * SEC,
    )
}

/// Health (`up`) of `service` per node, as `ambassador ls --json` on `host` sees the records.
fn ls_health(lan: &Lan, host: &Host, key: &Path, service: &str) -> BTreeMap<String, bool> {
    ls_rows(lan, host, &["--mesh-key-file", key.to_str().unwrap()])
        .iter()
        .filter(|r| r["service"] == service)
        .map(|r| {
            (
                r["node"].as_str().unwrap_or_default().to_string(),
                r["up"]
                    .as_bool()
                    .unwrap_or_else(|| panic!("ls row without a boolean \"up\": {r}")),
            )
        })
        .collect()
}

/// a. Round-robin over three providers spreads 300 connections 100 ± 10 each; weights 1:3 split
/// 400 connections 1:3 within 10 %.
#[test]
fn round_robin_and_weights_spread_connections() {
    let (lan, [a, b, c, d]) = lan!("a", "b", "c", "d");
    let key = lan.mesh_key("mesh");
    for h in [&b, &c, &d] {
        provider(&lan, h, &key, &[]);
    }
    // The weighted service: the same Redis of B and C, announced a second time as `redisw`
    // by a node of its own with a weight (the weight is per announcing node).
    for (h, weight) in [(&b, "1"), (&c, "3")] {
        lan.announce(h, &key)
            .spec("redisw:6390=127.0.0.1:6379")
            .node(&format!("{}w", h.name))
            .args(&["--weight", weight])
            .start();
    }
    lan.connect(&a, &key)
        .specs(&["redis", "redisw"])
        .policy("round-robin")
        .start();
    wait_all_answer(&lan, &a, 6379, &["b", "c", "d"], 20 * SEC);
    wait_all_answer(&lan, &a, 6390, &["b", "c"], 20 * SEC);

    // Even round-robin.
    let before = consumer_view(&lan, &a, "a", "redis");
    let t0 = Instant::now();
    let counts = spread(&lan, &a, 6379, 300);
    let took = t0.elapsed();
    report(&format!(
        "FIGURE round-robin over 3 providers, 300 connections: {counts:?} ({took:.2?}, {:.1} ms per connection)",
        took.as_secs_f64() * 1000.0 / 300.0
    ));
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["b", "c", "d"],
        "unexpected answers: {counts:?}"
    );
    for (who, n) in &counts {
        assert!(
            (90..=110).contains(n),
            "round-robin gave {who} {n} of 300 connections (want 100 ± 10): {counts:?}"
        );
    }
    // The status socket counts the same connections.
    let after = consumer_view(&lan, &a, "a", "redis");
    for (who, n) in &counts {
        let was = before.get(who).map_or(0, |s| s.total);
        let now = after
            .get(who)
            .unwrap_or_else(|| panic!("status lists no instance of {who}: {after:?}"));
        assert_eq!(now.health, "healthy", "status: {after:?}");
        assert_eq!(
            (now.total - was) as usize,
            *n,
            "status counts another number of connections to {who}: before {before:?}, after {after:?}"
        );
    }

    // Weights 1:3.
    let counts = spread(&lan, &a, 6390, 400);
    let (nb, nc) = (
        counts.get("b").copied().unwrap_or(0),
        counts.get("c").copied().unwrap_or(0),
    );
    report(&format!(
        "FIGURE round-robin with weights 1:3, 400 connections: b {nb}, c {nc} (1:{:.2})",
        nc as f64 / nb.max(1) as f64
    ));
    assert_eq!(nb + nc, 400, "unexpected answers: {counts:?}");
    assert!(
        (90..=110).contains(&nb) && (270..=330).contains(&nc),
        "weights 1:3 gave b {nb}, c {nc} of 400 (want 100 and 300 within 10 %)"
    );
}

/// A client running inside the consumer host: `threads` loops of short connections (connect,
/// SET, GET, GET who, close), each connection one JSON line in the results file, gated (see
/// [`ClientLoop`]).
const CLIENT: &str = r#"
import json, os, socket, sys, threading, time

port = int(sys.argv[4])

def line(r):
    l = r.readline()
    if not l.endswith(b"\r\n"):
        raise IOError("connection closed mid-reply: %r" % l)
    return l[:-2]

def bulk(r):
    h = line(r)
    if not h.startswith(b"$"):
        raise IOError("unexpected reply %r" % h)
    n = int(h[1:])
    if n < 0:
        return None
    d = r.read(n + 2)
    if len(d) != n + 2:
        raise IOError("short reply")
    return d[:-2]

def one(tid, i):
    key, val = "k%d-%d" % (tid, i), "v%d-%d-%f" % (tid, i, time.time())
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        r = s.makefile("rb")
        s.sendall(("SET %s %s\r\n" % (key, val)).encode())
        l = line(r)
        if l != b"+OK":
            raise IOError("SET answered %r" % l)
        s.sendall(("GET %s\r\n" % key).encode())
        v = bulk(r)
        if v != val.encode():
            raise IOError("GET answered %r, not %r" % (v, val))
        s.sendall(b"GET who\r\n")
        who = bulk(r)
        return "?" if who is None else who.decode()
    finally:
        s.close()

{GATED_LOOPS}
"#;

/// Starts the client loops of [`CLIENT`] on `host`, through the consumer's listener on `port`.
pub(crate) fn client(lan: &Lan, host: &Host, port: u16, threads: usize) -> ClientLoop {
    ClientLoop::start(lan, host, "client", CLIENT, threads, &[&port.to_string()])
}

/// What a fail-over must give the clients after `what`: no connection failed, the consumer
/// noticed the dead peer (`detection`: from the fault to "peer connection lost") within the
/// peer timeout and 2 s, and no connection waited for that: one sent to the dead peer is hedged
/// onto the live one after a few round trips (~0.1 s).
fn assert_failed_over(conns: &[Conn], detection: Option<Duration>, what: &str) {
    assert_no_failure(conns, what);
    let detection = detection.expect("the consumer never logged \"peer connection lost\"");
    assert!(
        detection < PEER_TIMEOUT + 2 * SEC,
        "{what}: the dead peer was noticed only after {detection:?} (peer timeout {PEER_TIMEOUT:?})"
    );
    assert!(
        worst(conns) < PEER_TIMEOUT / 2,
        "{what}: a connection waited {:?}: it was not hedged onto the live instance before the \
         peer timeout ({PEER_TIMEOUT:?}) noticed the dead one",
        worst(conns)
    );
}

fn median(conns: &[Conn]) -> Duration {
    let mut l: Vec<Duration> = conns.iter().map(Conn::latency).collect();
    l.sort();
    l.get(l.len() / 2).copied().unwrap_or_default()
}

/// b. While short connections run, one provider host's ambassador is SIGKILLed: no connection
/// fails, and none waits for the peer timeout (detection): an unanswered attempt is hedged onto
/// the live instance after a few round trips.
#[test]
fn sigkilled_provider_is_failed_over_without_errors() {
    let (lan, [a, b, c]) = lan!("a", "b", "c");
    let Pair {
        announce_b,
        connect,
        ..
    } = Pair::start(&lan, [&a, &b, &c], &[]);

    let client = client(&lan, &a, 6379, 4);
    client.wait_conns(&lan, 200, 20 * SEC);
    let lost_before = lost_peers(&lan, &connect);
    let t_kill = client.between_connections(&lan, || {
        lan.signal(&announce_b, "KILL");
        assert!(
            lan.wait_exit(&announce_b, 5 * SEC).is_some(),
            "B's ambassador survived SIGKILL"
        );
    });
    let t_detect = wait_peer_lost(&lan, &connect, lost_before);
    let after_detect = client.conns().len();
    // Some more connections once the dead peer is known.
    client.wait_conns(&lan, after_detect + 200, 20 * SEC);
    let view = consumer_view(&lan, &a, "a", "redis");
    let conns = client.stop(&lan);

    let detection = t_detect.map(|t| Duration::from_secs_f64(t - t_kill));
    let before: Vec<Conn> = conns.iter().filter(|c| c.end < t_kill).cloned().collect();
    let spike: Vec<Conn> = conns.iter().filter(|c| c.end >= t_kill).cloned().collect();
    let slow = spike
        .iter()
        .filter(|c| c.latency() > Duration::from_millis(500))
        .count();
    report(&format!(
        "FIGURE SIGKILL of a provider's ambassador: detection (kill to \"peer connection lost\" on the consumer) {detection:.2?}; \
         worst connection {:.2?} ({slow} took > 0.5 s), median {:.2?} before the kill; {} connections, {:?} before the kill, {:?} after",
        worst(&conns),
        median(&before),
        conns.len(),
        count_who(&before),
        count_who(&spike),
    ));
    assert_failed_over(&conns, detection, "SIGKILL of B's ambassador");
    assert!(
        count_who(&before).get("b").is_some_and(|n| *n > 10),
        "B carried too little before the kill to prove anything: {:?}",
        count_who(&before)
    );
    // Once the loss is known, B is ejected and everything goes to C at once.
    let t_detect = t_detect.unwrap();
    let late: Vec<&Conn> = conns.iter().filter(|c| c.start > t_detect).collect();
    assert!(late.len() >= 100, "too few connections after the detection");
    assert!(
        late.iter().all(|c| c.who.as_deref() == Some("c")),
        "connections after the detection still reached B: {:?}",
        count_who(late)
    );
    assert_eq!(
        view.get("b").map(|s| s.health.as_str()),
        Some("ejected"),
        "status on A: {view:?}"
    );
    assert_eq!(
        view.get("c").map(|s| s.health.as_str()),
        Some("healthy"),
        "status on A: {view:?}"
    );
}

/// c. A provider's Redis is killed while its ambassador stays: no connection fails, the record
/// is marked down within two health intervals, and a restarted Redis is used again.
#[test]
fn dead_target_is_marked_down_and_comes_back() {
    let (lan, [a, b, c]) = lan!("a", "b", "c");
    const INTERVAL: Duration = Duration::from_secs(1);
    let health = ["--health-interval", "1s"];
    let Pair { key, redis_b, .. } = Pair::start(&lan, [&a, &b, &c], &health);
    // A browse may miss a record that was multicast less than a second before: poll.
    let both_up = BTreeMap::from([("b".to_string(), true), ("c".to_string(), true)]);
    let mut seen = BTreeMap::new();
    assert!(
        wait_until(20 * SEC, Duration::from_millis(10), || {
            seen = ls_health(&lan, &a, &key, "redis");
            seen == both_up
        }),
        "ls on A before the kill: {seen:?}"
    );

    let client = client(&lan, &a, 6379, 2);
    client.wait_conns(&lan, 100, 20 * SEC);
    let t_kill = client.between_connections(&lan, || {
        lan.signal(&redis_b, "KILL");
        assert!(
            lan.wait_exit(&redis_b, 5 * SEC).is_some(),
            "B's Redis survived SIGKILL"
        );
    });
    let t_down = wait_target_up(&lan, &b, ("b", "redis"), false, 10 * SEC)
        .map(|t| Duration::from_secs_f64(t - t_kill));
    // Two health intervals after the kill, any browser on A finds B's record down: the first
    // `ls` started after that moment that lists B at all must say down.
    let marked_by = t_kill + (2 * INTERVAL + SEC / 2).as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64((marked_by - now_epoch()).max(0.0)));
    let mut b_in_ls = None;
    wait_until(10 * SEC, Duration::from_millis(10), || {
        b_in_ls = ls_health(&lan, &a, &key, "redis").get("b").copied();
        b_in_ls.is_some()
    });
    let n = client.conns().len();
    client.wait_conns(&lan, n + 100, 20 * SEC);

    // Redis comes back.
    let t_restart = now_epoch();
    lan.redis(&b, 6379).who("b").start();
    let t_up = wait_target_up(&lan, &b, ("b", "redis"), true, 10 * SEC)
        .map(|t| Duration::from_secs_f64(t - t_restart));
    let seen_up = wait_until(10 * SEC, Duration::from_millis(10), || {
        ls_health(&lan, &a, &key, "redis").get("b") == Some(&true)
    });
    let ls_up = Duration::from_secs_f64(now_epoch() - t_restart);
    let back = wait_until(15 * SEC, Duration::from_millis(20), || {
        client
            .conns()
            .iter()
            .any(|c| c.start > t_restart && c.who.as_deref() == Some("b"))
    });
    let conns = client.stop(&lan);
    let t_back = conns
        .iter()
        .filter(|c| c.start > t_restart && c.who.as_deref() == Some("b"))
        .map(|c| Duration::from_secs_f64(c.end - t_restart))
        .min();

    // Connections to B while its Redis was down were refused by B's ambassador (target
    // refused, then target down) and retried on C, or not tried at all once the record said
    // down: every answer came from C.
    let down_window: Vec<Conn> = conns
        .iter()
        .filter(|c| c.start > t_kill && c.end < t_restart)
        .cloned()
        .collect();
    report(&format!(
        "FIGURE Redis killed under its ambassador (health interval {INTERVAL:?}): status says target down after {t_down:.2?}, \
         ls on A started ≥ {:.2?} after the kill shows up={b_in_ls:?}; restarted: status says target up after {t_up:.2?}, \
         ls shows it up after {ls_up:.2?}, the first connection answered by it ends {t_back:.2?} after the restart; \
         worst connection {:.2?}, {} connections {:?}",
        2 * INTERVAL + SEC / 2,
        worst(&conns),
        conns.len(),
        count_who(&conns),
    ));
    assert_no_failure(&conns, "Redis on B killed and restarted");
    let t_down = t_down.expect("B's status never showed its target down");
    assert!(
        t_down <= 2 * INTERVAL + SEC / 2,
        "the dead target was marked down after {t_down:?}, more than two health intervals"
    );
    assert_eq!(
        b_in_ls,
        Some(false),
        "ls on A, started two health intervals after the kill, shows B's record as (up?)"
    );
    assert!(
        down_window.len() > 20 && down_window.iter().all(|c| c.who.as_deref() == Some("c")),
        "while B's Redis was down, connections went to {:?}",
        count_who(&down_window)
    );
    assert!(
        t_up.is_some(),
        "B's status never showed its target up again"
    );
    assert!(seen_up, "ls on A never showed B's record up again");
    assert!(
        back,
        "no connection reached B's restarted Redis within 15 s"
    );
}

/// d. A provider host's link is cut, then restored, while connections run: traffic moves away
/// without an error, then comes back.
#[test]
fn cut_link_moves_traffic_away_and_back() {
    let (lan, [a, b, c]) = lan!("a", "b", "c");
    let Pair { connect, .. } = Pair::start(&lan, [&a, &b, &c], &[]);

    let client = client(&lan, &a, 6379, 2);
    client.wait_conns(&lan, 100, 20 * SEC);
    let lost_before = lost_peers(&lan, &connect);
    let link = |state: &str| {
        let out = lan.run(&b, 10 * SEC, &["ip", "link", "set", &b.ifname, state]);
        assert!(out.ok(), "ip link set {} {state} on B: {out:?}", b.ifname);
    };
    let t_cut = client.between_connections(&lan, || link("down"));
    let t_detect = wait_peer_lost(&lan, &connect, lost_before);
    let n = client.conns().len();
    client.wait_conns(&lan, n + 120, 20 * SEC);

    // Restore the link as it was (taking it down dropped the routes through it).
    link("up");
    let t_restore = now_epoch();
    let route = lan.run(
        &b,
        10 * SEC,
        &["ip", "route", "replace", "224.0.0.0/4", "dev", &b.ifname],
    );
    assert!(route.ok(), "restoring B's multicast route: {route:?}");
    // Re-admitted: the consumer's status shows B healthy again (ejected until then, or
    // forgotten with its record and found anew).
    let t_readmit = wait_health(&lan, &a, "a", ("redis", "b"), "healthy", 20 * SEC);
    let back = wait_until(20 * SEC, Duration::from_millis(20), || {
        client
            .conns()
            .iter()
            .any(|c| c.start > t_restore && c.who.as_deref() == Some("b"))
    });
    let t_back = now_epoch();
    let n = client.conns().len();
    client.wait_conns(&lan, n + 100, 20 * SEC);
    let conns = client.stop(&lan);

    let since = |t: f64| Duration::from_secs_f64(t - t_cut);
    let during: Vec<Conn> = conns
        .iter()
        .filter(|c| t_detect.is_some_and(|t| c.start > t) && c.end < t_restore)
        .cloned()
        .collect();
    let first_back = conns
        .iter()
        .filter(|c| c.start > t_restore && c.who.as_deref() == Some("b"))
        .map(|c| c.end)
        .fold(f64::INFINITY, f64::min);
    let after: Vec<Conn> = conns.iter().filter(|c| c.start > t_back).cloned().collect();
    report(&format!(
        "FIGURE link of a provider cut for {:.2?}: detection {:?}; worst connection {:.2?}; \
         after the restore: re-admitted in {:?}, first connection to it after {:.2?}; \
         {} connections, {:?} while cut (after detection), {:?} after it came back",
        Duration::from_secs_f64(t_restore - t_cut),
        t_detect.map(since),
        worst(&conns),
        t_readmit.map(|t| Duration::from_secs_f64(t - t_restore)),
        Duration::from_secs_f64((first_back - t_restore).max(0.0)),
        conns.len(),
        count_who(&during),
        count_who(&after),
    ));
    assert_failed_over(&conns, t_detect.map(since), "B's link cut and restored");
    assert!(
        during.len() >= 100 && during.iter().all(|c| c.who.as_deref() == Some("c")),
        "while B was cut off, connections went to {:?}",
        count_who(&during)
    );
    assert!(
        back,
        "no connection reached B within 20 s of the restored link"
    );
    assert!(
        after.iter().any(|c| c.who.as_deref() == Some("b")),
        "traffic did not keep returning to B: {:?}",
        count_who(&after)
    );
}
