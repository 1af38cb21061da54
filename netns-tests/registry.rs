//! Beyond one LAN: the etcd registry across two subnets (issue 15, points 4 and 5).
//!
//! Subnet 1 holds the consumers (`a`, `a2`), subnet 2 the providers (`b`..`e`), subnet 3 a
//! 3-member etcd cluster (`e1`..`e3`); one router joins them and routes no multicast, so mDNS
//! does not cross it and the consumers find the providers through etcd alone. One set-up runs
//! the scenarios in order, with one client loop on `a` throughout (short connections, each
//! `SET`, `GET`, `GET who`) that must see no failure while a live instance exists:
//! a. two providers reached through the registry alone (and not through mDNS);
//! b. the etcd leader SIGKILLed: a provider started then is still discovered;
//! c. the whole cluster SIGKILLed: consumers keep their instances, providers keep serving, and
//!    a provider stopped and one started meanwhile are caught up when it is back;
//! d. a provider SIGKILLed: failed over at once, its key gone within the lease TTL;
//! e. etcd wiped: every live provider puts its key again within one lease period, the old
//!    consumer follows the new store, and a consumer started then finds them;
//! f. dynamic-ambassador's `/services/...` keys: a direct backend across the router.
//!
//! Without etcd it prints `SKIPPED: registry netns tests need etcd (...)`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::failover::client;
use crate::harness::{
    Host, Lan, MS, Out, Proc, SEC, have_tools, log_epoch, now_epoch, report, wait_until,
};
use crate::nodes::{
    ClientLoop, Conn, assert_no_failure, count_who, ls_rows, wait_all_answer, wait_who, worst,
};

/// The publishers' lease (`node::registry_publish::LEASE_TTL`): a dead node's keys go this
/// long after its last keep-alive.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// The consumers' default `--peer-timeout`.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// etcd's client and peer ports on each member's address.
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// A 3-member etcd cluster, one member per host. Every member is a process of the LAN (killed
/// with it, even when the test fails); its data is in the test directory.
struct Etcd<'a> {
    lan: &'a Lan,
    members: Vec<Host>,
    procs: Vec<Option<Proc>>,
    /// Where `etcdctl` runs (a consumer's host: through the router, as the nodes reach it).
    client: Host,
    /// `--initial-cluster-token`, new for a wiped cluster.
    token: String,
    /// Members started so far (each start logs to a file of its own).
    started: usize,
}

impl<'a> Etcd<'a> {
    /// Starts one member on each of `members` and waits until all answer.
    fn start(lan: &'a Lan, members: &[Host], client: &Host) -> Etcd<'a> {
        let mut etcd = Etcd {
            lan,
            members: members.to_vec(),
            procs: vec![None; members.len()],
            client: client.clone(),
            token: format!("ambt-{}-1", lan.id),
            started: 0,
        };
        let took = etcd.start_all();
        report(&format!(
            "FIGURE etcd: {} members up and healthy in {took:.2?}",
            members.len()
        ));
        etcd
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.lan.path(&format!("etcd-{}", self.members[i].name))
    }

    /// Starts member `i` (on its data, if it has some: then the cluster flags are ignored).
    fn spawn(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.ip))
            .collect();
        let m = &self.members[i];
        let (peer, client) = (
            format!("http://{}:{PEER_PORT}", m.ip),
            format!("http://{}:{CLIENT_PORT}", m.ip),
        );
        let dir = self.data_dir(i);
        let label = format!("etcd-{}-{}", m.name, self.started);
        let args = [
            "etcd",
            "--name",
            &m.name,
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--initial-cluster",
            &cluster.join(","),
            "--initial-cluster-token",
            &self.token,
            "--initial-cluster-state",
            "new",
        ];
        let p = self.lan.spawn(m, &label, &args);
        self.started += 1;
        self.procs[i] = Some(p);
    }

    /// SIGKILLs member `i` (its data stays).
    fn kill(&mut self, i: usize) {
        if let Some(p) = self.procs[i].take() {
            self.lan.signal(&p, "KILL");
            assert!(
                self.lan.wait_exit(&p, 5 * SEC).is_some(),
                "etcd {} survived SIGKILL",
                self.members[i].name
            );
        }
    }

    fn kill_all(&mut self) {
        (0..self.members.len()).for_each(|i| self.kill(i));
    }

    /// Starts every member that is not running; how long until all answered.
    fn start_all(&mut self) -> Duration {
        let t0 = Instant::now();
        for i in 0..self.members.len() {
            if self.procs[i].is_none() {
                self.spawn(i);
            }
        }
        assert!(
            wait_until(20 * SEC, 50 * MS, || self.ctl(&["endpoint", "health"]).ok()),
            "the etcd cluster did not become healthy within 20 s: {:?}",
            self.ctl(&["endpoint", "health"])
        );
        t0.elapsed()
    }

    /// Stops every member, deletes their data, starts a new cluster (a new token).
    fn wipe(&mut self) -> Duration {
        self.kill_all();
        for i in 0..self.members.len() {
            std::fs::remove_dir_all(self.data_dir(i)).expect("wipe a member's data");
        }
        self.token = format!("ambt-{}-{}", self.lan.id, self.started);
        self.start_all()
    }

    /// The member that leads the cluster now (`endpoint status`: its IS LEADER column).
    fn leader(&self) -> usize {
        let text = self.ctl_ok(&["endpoint", "status"]);
        // `ENDPOINT, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER, RAFT TERM, ...`
        let ep = text
            .lines()
            .map(|l| l.split(',').map(str::trim).collect::<Vec<_>>())
            .find(|f| f.get(4) == Some(&"true"))
            .map(|f| f[0].to_string())
            .unwrap_or_else(|| panic!("no leader in `etcdctl endpoint status`: {text}"));
        self.members
            .iter()
            .position(|m| ep == format!("{}:{CLIENT_PORT}", m.ip))
            .unwrap_or_else(|| panic!("the leader {ep} is no member"))
    }

    /// `HOST:PORT,...` of every member.
    fn endpoints(&self) -> String {
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}:{CLIENT_PORT}", m.ip))
            .collect();
        eps.join(",")
    }

    /// `--registry` for the cluster.
    fn registry(&self) -> String {
        format!("etcd://{}", self.endpoints())
    }

    /// `etcdctl ARGS...` against every member, from the client host.
    fn ctl(&self, args: &[&str]) -> Out {
        let eps = self.endpoints();
        let mut all = vec![
            "etcdctl",
            "--endpoints",
            &eps,
            "--dial-timeout",
            "1s",
            "--command-timeout",
            "2s",
        ];
        all.extend_from_slice(args);
        self.lan.run(&self.client, 10 * SEC, &all)
    }

    /// `etcdctl ARGS...`, which must succeed.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.ok(), "etcdctl {args:?}: {out:?}");
        out.stdout
    }

    /// The nodes with a key of service `redis` under `/ambassador/` now (`None` when etcd did
    /// not answer).
    fn published(&self) -> Option<BTreeSet<String>> {
        let out = self.ctl(&["get", "--prefix", "--keys-only", "/ambassador/"]);
        out.ok().then(|| {
            // `/ambassador/<mesh id>/<service>/<node>@<fp16>`
            out.stdout
                .lines()
                .filter_map(|k| {
                    let parts: Vec<&str> = k.split('/').collect();
                    match parts[..] {
                        ["", "ambassador", _, "redis", inst] => {
                            inst.split_once('@').map(|(n, _)| n.to_string())
                        }
                        _ => None,
                    }
                })
                .collect()
        })
    }

    /// Polls until the nodes with a key satisfy `pred`; how long it took, `None` at `timeout`.
    fn await_published(
        &self,
        timeout: Duration,
        pred: impl Fn(&BTreeSet<String>) -> bool,
    ) -> Option<Duration> {
        let t0 = Instant::now();
        wait_until(timeout, 50 * MS, || {
            self.published().is_some_and(|p| pred(&p))
        })
        .then(|| t0.elapsed())
    }
}

/// Node names as a set.
fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Starts Redis on `host`:6379 holding `who` = the host's name, and `announce redis:6379`
/// with `--registry` in front of it; returns the announce, once its key is in etcd.
fn provider(lan: &Lan, host: &Host, key: &Path, etcd: &Etcd) -> Proc {
    lan.redis(host, 6379).who(&host.name).start();
    let p = lan
        .announce(host, key)
        .spec("redis:6379")
        .args(&["--registry", &etcd.registry()])
        .start();
    let put = etcd.await_published(10 * SEC, |p| p.contains(&host.name));
    assert!(
        put.is_some(),
        "{}'s key did not appear in etcd: {:?}",
        host.name,
        etcd.published()
    );
    p
}

/// When `p` first logged a line containing every one of `needles` (its time stamp, epoch
/// seconds), waiting up to `timeout`.
fn await_line(lan: &Lan, p: &Proc, needles: &[&str], timeout: Duration) -> Option<f64> {
    let mut at = None;
    wait_until(timeout, 20 * MS, || {
        at = lan
            .log(p)
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(|l| log_epoch(l).unwrap_or_else(now_epoch));
        at.is_some()
    });
    at
}

/// When consumer `p` first logged the instance of `node` discovered in etcd.
fn await_discovered(lan: &Lan, p: &Proc, node: &str, timeout: Duration) -> Option<f64> {
    let inst = format!("instance=redis@{node}_");
    await_line(lan, p, &["discovered in the etcd registry", &inst], timeout)
}

/// Seconds from `t0` to `t` (epoch seconds), as a duration.
fn since(t0: f64, t: f64) -> Duration {
    Duration::from_secs_f64((t - t0).max(0.0))
}

/// The loop's connections that started at or after `t0`, none of which may have failed.
fn phase(client: &ClientLoop, t0: f64, what: &str) -> Vec<Conn> {
    let conns: Vec<Conn> = client
        .conns()
        .into_iter()
        .filter(|c| c.start >= t0)
        .collect();
    assert_no_failure(&conns, what);
    conns
}

/// Waits until the loop has finished `n` more connections than now (traffic through a fault).
fn more_traffic(lan: &Lan, client: &ClientLoop, n: usize) {
    let now = client.conns().len();
    client.wait_conns(lan, now + n, 30 * SEC);
}

/// Waits until a connection of the loop that started at `t` (epoch seconds) or later has
/// ended: traffic through a fault until then.
fn traffic_until(lan: &Lan, client: &ClientLoop, t: f64) {
    let limit = since(now_epoch(), t) + 30 * SEC;
    let ok = wait_until(limit, 20 * MS, || {
        client.conns().iter().any(|c| c.start >= t)
    });
    assert!(
        ok,
        "the client loop stalled; its log: {}",
        lan.log(&client.proc)
    );
}

/// The longest pause between two attempts to reach etcd (`discovery::etcd::Backoff`).
const BACKOFF_CAP: Duration = Duration::from_secs(4);

/// What a lease's expiry may take past its TTL, as seen here: etcd looks for expired leases
/// every 500 ms, and each look of ours is an `etcdctl` run.
const EXPIRY_SLACK: Duration = Duration::from_millis(1500);

/// The bound on discovering a provider started as the etcd leader is SIGKILLed: a request
/// sent during the election may go unanswered for the whole request timeout (3 s,
/// `discovery::etcd::REQUEST_TIMEOUT`), then one failed attempt at the dead member and two
/// retry pauses (250 ms, 500 ms), with room for a loaded machine. (With a follower killed
/// it takes well under a second.)
const MEMBER_DOWN_BOUND: Duration = Duration::from_secs(6);

/// How long the whole etcd cluster stays down in scenario c: past the publishers' and
/// followers' backoff cap (4 s), so their retries are at their slowest when it returns.
const OUTAGE: Duration = Duration::from_secs(5);

/// Issue 15, points 4 and 5: see the module documentation.
#[test]
fn registry_across_subnets_through_faults() {
    if !have_tools(
        &["etcd", "etcdctl"],
        "registry netns tests need etcd (apt-get install etcd-server etcd-client)",
    ) {
        return;
    }
    let subnets: [&[&str]; 3] = [&["a", "a2"], &["b", "c", "d", "e"], &["e1", "e2", "e3"]];
    let Some(lan) = Lan::routed(&subnets) else {
        return;
    };
    let [a, a2, b, c, d, e] = ["a", "a2", "b", "c", "d", "e"].map(|n| lan.host(n));
    let members = ["e1", "e2", "e3"].map(|n| lan.host(n));
    let mut etcd = Etcd::start(&lan, &members, &a);
    let key = lan.mesh_key("mesh");
    let key_s = key.to_str().unwrap().to_string();
    let registry = etcd.registry();

    // a. Through the registry alone.
    let announce_b = provider(&lan, &b, &key, &etcd);
    provider(&lan, &c, &key, &etcd);
    let t0 = now_epoch();
    let connect = lan
        .connect(&a, &key)
        .spec("redis")
        .args(&["--registry", &registry])
        .start();
    wait_all_answer(&lan, &a, 6379, &["b", "c"], 20 * SEC);
    let first = since(t0, now_epoch());
    // SET and GET on one connection (each provider has a Redis of its own).
    let one = lan.sh(
        &a,
        10 * SEC,
        "printf 'SET across router\\nGET across\\n' | redis-cli -p 6379",
    );
    assert_eq!(one.stdout, "OK\nrouter\n", "SET and GET through a: {one:?}");
    // mDNS does not cross the router: `ls` in subnet 1 lists nothing without the registry and
    // both with it, while `ls` in subnet 2 finds both by mDNS alone (same moment, so the
    // records were being multicast).
    let redis_nodes = |rows: Vec<serde_json::Value>| -> BTreeSet<String> {
        rows.iter()
            .filter(|r| r["service"] == "redis" && r["mesh_match"] == true)
            .filter_map(|r| r["node"].as_str().map(str::to_string))
            .collect()
    };
    let plain = ["--mesh-key-file", key_s.as_str(), "--timeout", "3s"];
    let with = ["--mesh-key-file", key_s.as_str(), "--registry", &registry];
    let (mdns_a, etcd_a, mdns_d) = std::thread::scope(|s| {
        let mdns_a = s.spawn(|| redis_nodes(ls_rows(&lan, &a, &plain)));
        let etcd_a = s.spawn(|| redis_nodes(ls_rows(&lan, &a, &with)));
        let mdns_d = s.spawn(|| {
            let mut seen = BTreeSet::new();
            wait_until(10 * SEC, 100 * MS, || {
                seen = redis_nodes(ls_rows(&lan, &d, &plain));
                seen == set(&["b", "c"])
            });
            seen
        });
        (
            mdns_a.join().unwrap(),
            etcd_a.join().unwrap(),
            mdns_d.join().unwrap(),
        )
    });
    report(&format!(
        "FIGURE a. registry alone: consumer in subnet 1 answered by both providers of subnet 2 \
         {first:.2?} after its start; ls in subnet 1: mDNS {mdns_a:?}, with --registry {etcd_a:?}; \
         ls in subnet 2 by mDNS: {mdns_d:?}"
    ));
    assert_eq!(
        mdns_d,
        set(&["b", "c"]),
        "mDNS inside subnet 2 (the control)"
    );
    assert!(mdns_a.is_empty(), "mDNS crossed the router: {mdns_a:?}");
    assert_eq!(etcd_a, set(&["b", "c"]), "ls --registry in subnet 1");

    let client = client(&lan, &a, 6379, 2);
    client.wait_conns(&lan, 50, 20 * SEC);

    // b. The leader SIGKILLed; a provider started after that is still discovered.
    let tb = now_epoch();
    let leader = etcd.leader();
    etcd.kill(leader);
    let t_d = now_epoch();
    let announce_d = provider(&lan, &d, &key, &etcd);
    let found_d = await_discovered(&lan, &connect, "d", 15 * SEC).map(|t| since(t_d, t));
    more_traffic(&lan, &client, 50);
    let conns = phase(&client, tb, "b. an etcd member killed");
    report(&format!(
        "FIGURE b. the leader, member {}, SIGKILLed: a provider started then discovered by the consumer {found_d:.2?} \
         after its start; {} connections, {:?}, none failed",
        members[leader].name,
        conns.len(),
        count_who(&conns)
    ));
    // Each node keeps to one member and takes the next after a failure: the dead member
    // costs one failed attempt and a retry pause, not a share of every request.
    let found_d = found_d.expect("the consumer never discovered d with a member down");
    assert!(
        found_d < MEMBER_DOWN_BOUND,
        "with a member down, d was discovered only after {found_d:?}"
    );
    let back = etcd.start_all();
    report(&format!(
        "FIGURE b. member restarted with its data, cluster healthy in {back:.2?}"
    ));

    // c. The whole cluster down: nothing lost; a change made meanwhile is caught up.
    let tc = now_epoch();
    etcd.kill_all();
    more_traffic(&lan, &client, 50);
    let t_stop = Instant::now();
    lan.signal(&announce_d, "TERM");
    lan.wait_clean_exit(&announce_d, 10 * SEC, "d stopped while etcd is down");
    let stop_took = t_stop.elapsed();
    lan.redis(&e, 6379).who("e").start();
    let announce_e = lan
        .announce(&e, &key)
        .spec("redis:6379")
        .args(&["--registry", &registry])
        .start();
    assert!(
        lan.wait_log(&announce_e, "etcd registry unreachable", 10 * SEC),
        "e did not say that etcd is unreachable"
    );
    traffic_until(&lan, &client, tc + OUTAGE.as_secs_f64());
    let down = phase(&client, tc, "c. the whole cluster down");
    let down_secs = since(tc, now_epoch());
    let t_back = now_epoch();
    let back = etcd.start_all();
    let found_e = await_discovered(&lan, &connect, "e", 15 * SEC).map(|t| since(t_back, t));
    // d's key outlived d (its drain could not reach etcd); a restored lease counts its TTL
    // again from the cluster's new leader, so the key goes about one TTL after the return.
    let gone_d = etcd
        .await_published(LEASE_TTL + 5 * SEC, |p| !p.contains("d"))
        .map(|_| since(t_back, now_epoch()));
    let now = etcd.published();
    more_traffic(&lan, &client, 50);
    let conns = phase(&client, tc, "c. the whole cluster down and back");
    report(&format!(
        "FIGURE c. all members SIGKILLed for {down_secs:.2?}: {} connections meanwhile, {:?}, none failed; \
         d stopped cleanly meanwhile (exit after {stop_took:.2?}), e started; cluster healthy again {back:.2?} \
         after its restart began; counted from the restart, e discovered after {found_e:.2?}, d's key gone after {:.2?} \
         (lease TTL {LEASE_TTL:?}); \
         {} connections in all, none failed, the slowest {:.2?}",
        down.len(),
        count_who(&down),
        gone_d,
        conns.len(),
        worst(&conns)
    ));
    assert!(
        count_who(&down).len() >= 2,
        "while etcd was down, fewer than two providers served: {:?}",
        count_who(&down)
    );
    // Caught up at the next retry: the backoff is at its cap (4 s) after a 5 s outage.
    let found_e = found_e.expect("e was not caught up after etcd came back");
    assert!(
        found_e < back + BACKOFF_CAP + SEC,
        "e was caught up {found_e:?} after the restart began (cluster healthy after {back:?})"
    );
    assert!(
        gone_d.is_some(),
        "d's key outlived its lease after etcd came back: {now:?}"
    );
    assert_eq!(now, Some(set(&["b", "c", "e"])), "keys after the outage");
    wait_all_answer(&lan, &a, 6379, &["b", "c", "e"], 20 * SEC);

    // d. A provider SIGKILLed: failed over, its key gone within the lease TTL.
    let td = now_epoch();
    let t_kill = client.between_connections(&lan, || {
        lan.signal(&announce_b, "KILL");
        assert!(
            lan.wait_exit(&announce_b, 5 * SEC).is_some(),
            "b's ambassador survived SIGKILL"
        );
    });
    let lost = await_line(
        &lan,
        &connect,
        &["peer connection lost", "peer=b/"],
        PEER_TIMEOUT + 10 * SEC,
    )
    .map(|t| since(t_kill, t));
    let key_gone = etcd
        .await_published(LEASE_TTL + 5 * SEC, |p| !p.contains("b"))
        .map(|_| since(t_kill, now_epoch()));
    let withdrawn = await_line(
        &lan,
        &connect,
        &["withdrawn from the etcd registry", "instance=redis@b_"],
        5 * SEC,
    )
    .map(|t| since(t_kill, t));
    more_traffic(&lan, &client, 50);
    let conns = phase(&client, td, "d. a provider SIGKILLed");
    let after: Vec<&Conn> = conns.iter().filter(|c| c.start > t_kill).collect();
    report(&format!(
        "FIGURE d. provider b SIGKILLed: consumer lost the peer after {lost:.2?} (peer timeout {PEER_TIMEOUT:?}), \
         b's key gone from etcd after {key_gone:.2?} (lease TTL {LEASE_TTL:?}), consumer dropped the record \
         after {withdrawn:.2?}; {} connections, after the kill {:?}, none failed, the slowest {:.2?}",
        conns.len(),
        count_who(after.iter().copied()),
        worst(&conns)
    ));
    let lost = lost.expect("the consumer never lost b's peer connection");
    assert!(
        lost < PEER_TIMEOUT + 2 * SEC,
        "b's death noticed after {lost:?}, peer timeout {PEER_TIMEOUT:?}"
    );
    let key_gone = key_gone.expect("b's key was never deleted");
    assert!(
        key_gone <= LEASE_TTL + EXPIRY_SLACK,
        "b's key went {key_gone:?} after the kill, lease TTL {LEASE_TTL:?}"
    );
    assert!(
        after.iter().all(|c| c.who.as_deref() != Some("b")),
        "connections after the kill reached b: {:?}",
        count_who(after.iter().copied())
    );

    // e. etcd wiped: every live provider re-registers within one lease period.
    let te = now_epoch();
    let fresh = etcd.wipe();
    let again = etcd.await_published(LEASE_TTL + SEC, |p| *p == set(&["c", "e"]));
    let wiped_for = since(te, now_epoch());
    // The old consumer read the new store anew (its revisions went back): a provider started
    // now (d again, its Redis still there) is discovered by it.
    let needles = ["discovered in the etcd registry", "instance=redis@d_"];
    let before = lan.count_lines(&connect, &needles);
    let t_d2 = now_epoch();
    lan.announce(&d, &key)
        .spec("redis:6379")
        .label("announce-d-again")
        .args(&["--registry", &registry])
        .start();
    let found_d2 = wait_until(10 * SEC, 20 * MS, || {
        lan.count_lines(&connect, &needles) > before
    })
    .then(|| since(t_d2, now_epoch()));
    let t_new = now_epoch();
    let connect2 = lan
        .connect(&a2, &key)
        .spec("redis")
        .args(&["--registry", &registry])
        .start();
    wait_all_answer(&lan, &a2, 6379, &["c", "d", "e"], 20 * SEC);
    let new_first = since(t_new, now_epoch());
    more_traffic(&lan, &client, 50);
    let conns = phase(&client, te, "e. etcd wiped");
    report(&format!(
        "FIGURE e. etcd wiped (fresh cluster healthy in {fresh:.2?}): c and e put their keys again \
         {again:.2?} later, {wiped_for:.2?} after the old one was killed (lease TTL {LEASE_TTL:?}); d started again, discovered by the old consumer after \
         {found_d2:.2?}; a consumer started then answered by c, d and e after {new_first:.2?}; {} connections on the old consumer, {:?}, none failed",
        conns.len(),
        count_who(&conns)
    ));
    let again = again.unwrap_or_else(|| {
        panic!(
            "live providers did not re-register within one lease period: {:?}",
            etcd.published()
        )
    });
    assert!(again <= LEASE_TTL, "re-registered after {again:?}");
    assert!(
        found_d2.is_some(),
        "the old consumer did not follow the wiped store: d started again was not discovered"
    );
    assert!(
        await_discovered(&lan, &connect2, "c", SEC).is_some(),
        "the new consumer found c, but not through etcd"
    );

    // f. dynamic-ambassador's layout: a direct backend across the router.
    lan.redis(&b, 6380).lan_too().who("b-direct").start();
    let seed = format!("/services/redis/6379/abc/{}:6380", b.ip);
    etcd.ctl_ok(&["put", &seed, "{}"]);
    let t_seed = Instant::now();
    lan.connect(&a2, &key)
        .spec("redis:16379")
        .node("a2-seed")
        .args(&[
            "--discover",
            "etcd-keys:/services/redis",
            "--registry",
            &registry,
        ])
        .start();
    let took = wait_who(&lan, &a2, 16379, "b-direct", 15 * SEC);
    // The connection, as b's Redis sees it, comes from a2 itself: no ambassador on the way.
    let seen_from = crate::nodes::redis(&lan, &a2, 16379, &["CLIENT", "INFO"]);
    report(&format!(
        "FIGURE f. /services/redis key: consumer in subnet 1 reached b's Redis directly {:.2?} after its \
         start (first answer in {took:.2?})",
        t_seed.elapsed()
    ));
    assert!(
        seen_from.stdout.contains(&format!("addr={}:", a2.ip)),
        "b's Redis sees the connection from elsewhere than a2 ({}): {seen_from:?}",
        a2.ip
    );

    let conns = client.stop(&lan);
    assert_no_failure(&conns, "the whole run");
    report(&format!(
        "FIGURE registry across subnets: {} client connections through a–e, none failed",
        conns.len()
    ));
}
