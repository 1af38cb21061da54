//! The etcd registry (`--registry etcd://...`) on loopback, against a real etcd started for
//! each test on free ports with its own data directory: a provider publishes its key and a
//! consumer finds it through etcd alone (mDNS is limited to an interface that does not exist);
//! a clean stop deletes the key at once; another mesh's record is refused; dynamic-ambassador's
//! `/services/...` keys are direct backends; a consumer keeps serving while etcd is down, and
//! the nodes catch up when it comes back, with its data or without.
//!
//! Without etcd installed, the tests print `SKIPPED: registry tests need etcd (apt-get install
//! etcd-server)` and pass.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::redis::{Redis, poll, redis_cli};
use common::{Mesh, Output, Proc, READY, command, free_tcp_port, run, status, unique};
use serde_json::Value;

/// Whether etcd and etcdctl are installed; says SKIPPED when not.
fn etcd_installed() -> bool {
    let found = |bin: &str| {
        Command::new(bin)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    let ok = found("etcd") && found("etcdctl");
    if !ok {
        println!("SKIPPED: registry tests need etcd (apt-get install etcd-server)");
    }
    ok
}

/// A private etcd on 127.0.0.1: killed, and its data directory removed, on drop.
struct Etcd {
    child: Option<Child>,
    client: u16,
    peer: u16,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts one on free ports (retrying on the rare collision) and waits until it answers.
    fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut etcd = Etcd {
            child: None,
            client: 0,
            peer: 0,
            dir,
        };
        for _ in 0..5 {
            (etcd.client, etcd.peer) = (free_tcp_port(), free_tcp_port());
            if etcd.client != etcd.peer && etcd.spawn() {
                return etcd;
            }
        }
        panic!("etcd did not start on any of several free ports");
    }

    /// Spawns etcd on its ports and data directory; whether it answers (false: it exited).
    fn spawn(&mut self) -> bool {
        let client = format!("http://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new("etcd")
            .args(["--name", "default", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let up = poll(READY, || {
            if let Some(c) = self.child.as_mut()
                && c.try_wait().expect("try_wait").is_some()
            {
                return Some(false);
            }
            (self.ctl(&["endpoint", "health"]).code() == 0).then_some(true)
        });
        match up {
            Some(up) => up,
            None => panic!(
                "etcd on port {} did not answer within {READY:?}",
                self.client
            ),
        }
    }

    /// `--registry` for it.
    fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client)
    }

    /// `etcdctl ARGS...` against it.
    fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("127.0.0.1:{}", self.client)])
            .args(["--dial-timeout", "1s", "--command-timeout", "2s"])
            .args(args);
        run(cmd, Duration::from_secs(10))
    }

    /// `etcdctl ARGS...`, which must succeed.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert_eq!(out.code(), 0, "etcdctl {args:?}: {out:?}");
        out.stdout
    }

    /// The keys under `prefix`, and their values.
    fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let text = self.ctl_ok(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .map(|kv| (kv[0].to_string(), kv.get(1).unwrap_or(&"").to_string()))
            .collect()
    }

    /// Kills it (its data stays).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data directory.
    fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "etcd did not start again on port {}",
            self.client
        );
    }

    /// Starts it again on the same ports with its data wiped.
    fn restart_wiped(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.dir.path().join("data")).expect("wipe etcd's data");
        assert!(
            self.spawn(),
            "etcd did not start again on port {}",
            self.client
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ambassador SUB` as node `node` of `mesh`, QUIC on 127.0.0.1, mDNS off, with `--registry`.
fn node_cmd(mesh: &Mesh, etcd: &Etcd, sub: &str, node: &str) -> Command {
    let mut cmd = command(mesh.dir.path());
    cmd.args([sub, "--no-mdns", "--bind", "127.0.0.1", "--node", node])
        .arg("--mesh-key-file")
        .arg(&mesh.key_file)
        .args(["--registry", &etcd.url()]);
    cmd
}

/// A provider of `redis` (advertised port 6379) in front of `redis`, once its key is put.
fn provider(mesh: &Mesh, etcd: &Etcd, node: &str, redis: &Redis) -> Proc {
    let mut cmd = node_cmd(mesh, etcd, "announce", node);
    cmd.arg(format!("redis:6379=127.0.0.1:{}", redis.port));
    let p = Proc::spawn(&format!("announce {node}"), cmd);
    p.expect_log(&["published to the etcd registry", "keys=1"], READY);
    p
}

/// A consumer `connect redis:PORT EXTRA...` on a free port, once it listens.
fn consumer(mesh: &Mesh, etcd: &Etcd, node: &str, extra: &[&str]) -> (Proc, u16) {
    let port = free_tcp_port();
    let mut cmd = node_cmd(mesh, etcd, "connect", node);
    cmd.arg(format!("redis:{port}")).args(extra);
    let p = Proc::spawn(&format!("connect {node}"), cmd);
    p.expect_log(&["listening", &format!("listen=127.0.0.1:{port}")], READY);
    (p, port)
}

/// Waits until `redis-cli -p PORT PING` through a consumer answers PONG.
fn await_pong(port: u16, what: &str) {
    let pong = poll(READY, || {
        (redis_cli(port, &["PING"]) == "PONG").then_some(())
    });
    assert!(pong.is_some(), "{what}: no PONG through 127.0.0.1:{port}");
}

/// Polls `etcd` until the keys under `prefix` satisfy `pred`, or fails after `limit`.
fn await_keys(
    etcd: &Etcd,
    prefix: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(&[(String, String)]) -> bool,
) {
    let ok = poll(limit, || pred(&etcd.get_prefix(prefix)).then_some(()));
    assert!(
        ok.is_some(),
        "{what} within {limit:?}: {:?}",
        etcd.get_prefix(prefix)
    );
}

/// The nodes the consumer's status lists as instances of its one service.
fn listed_nodes(mesh: &Mesh, consumer: &str) -> Vec<String> {
    status(mesh.dir.path())
        .iter()
        .filter(|n| n["node"] == consumer)
        .flat_map(|n| n["connect"].as_array().cloned().unwrap_or_default())
        .flat_map(|c| c["instances"].as_array().cloned().unwrap_or_default())
        .filter_map(|i| i["node"].as_str().map(str::to_string))
        .collect()
}

/// A provider found through etcd alone carries Redis; its key holds the record's fields;
/// another mesh's record put by hand is refused; a clean stop deletes the key at once.
#[test]
fn publish_consume_refuse_and_stop() {
    if !etcd_installed() {
        return;
    }
    let etcd = Etcd::start();
    let mesh = Mesh::new();
    let redis = Redis::start(mesh.dir.path());
    let prov = unique("prov");
    let mut provider = provider(&mesh, &etcd, &prov, &redis);
    let cons = unique("cons");
    let (consumer, port) = consumer(&mesh, &etcd, &cons, &[]);
    consumer.expect_log(
        &[
            "discovered in the etcd registry",
            &format!("instance=redis@{prov}_"),
        ],
        READY,
    );
    await_pong(port, "through etcd");
    assert_eq!(redis_cli(port, &["SET", "registry", "works"]), "OK");
    assert_eq!(redis_cli(port, &["GET", "registry"]), "works");
    assert_eq!(
        redis_cli(redis.port, &["GET", "registry"]),
        "works",
        "it reached the real Redis"
    );

    // The key and its value.
    let keys = etcd.get_prefix("/ambassador/");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (key, value) = &keys[0];
    let v: Value = serde_json::from_str(value).expect("the value is JSON");
    let mesh_id = v["mesh"].as_str().expect("mesh");
    let id = v["id"].as_str().expect("id");
    assert_eq!(
        key,
        &format!("/ambassador/{mesh_id}/redis/{prov}@{}", &id[..16])
    );
    assert_eq!(
        (v["v"].as_str(), v["svc"].as_str(), v["node"].as_str()),
        (Some("1"), Some("redis"), Some(prov.as_str()))
    );
    assert_eq!(
        (v["port"].as_u64(), v["w"].as_u64(), v["h"].as_str()),
        (Some(6379), Some(1), Some("up"))
    );
    assert_eq!(id.len(), 64);
    let quic = common::quic_port(mesh.dir.path(), &prov);
    assert_eq!(v["addrs"], serde_json::json!([format!("127.0.0.1:{quic}")]));
    assert!(listed_nodes(&mesh, &cons).contains(&prov));
    // --no-mdns: the provider is in etcd only, not on mDNS (which `ls` alone browses).
    provider.expect_log(&["mDNS off (--no-mdns)"], READY);
    let mut mdns_ls = mesh.node_command("ls", &unique("ls"));
    mdns_ls.args(["--json", "--timeout", "500ms"]);
    let out = run(mdns_ls, Duration::from_secs(10));
    assert!(
        !out.stdout.contains(&format!("\"{prov}\"")),
        "not announced over mDNS: {out:?}"
    );
    let mut ls = node_cmd(&mesh, &etcd, "ls", &unique("ls"));
    ls.args(["--json", "--timeout", "200ms"]);
    let out = run(ls, Duration::from_secs(10));
    assert_eq!(out.code(), 0, "{out:?}");
    let rows: Value = serde_json::from_str(&out.stdout).expect("ls --json");
    assert!(
        rows.as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["node"] == prov.as_str() && r["mesh_match"] == true)),
        "ls lists the provider from etcd: {rows}"
    );

    // Another mesh's record, under our prefix: logged, never used.
    let evil = format!("/ambassador/{mesh_id}/redis/evil@{}", "ee".repeat(8));
    let mut forged = v.clone();
    forged["mesh"] = "fedcba9876543210".into();
    forged["node"] = "evil".into();
    forged["id"] = "ee".repeat(32).into();
    etcd.ctl_ok(&["put", &evil, &forged.to_string()]);
    consumer.expect_log(&["ignoring an etcd record of another mesh", &evil], READY);
    assert!(!listed_nodes(&mesh, &cons).contains(&"evil".to_string()));
    etcd.ctl_ok(&["del", &evil]);

    // A clean stop: the key goes at once.
    provider.signal("TERM");
    let prefix = format!("/ambassador/{mesh_id}/");
    await_keys(
        &etcd,
        &prefix,
        Duration::from_secs(2),
        "the key deleted at a clean stop",
        |k| k.is_empty(),
    );
    assert!(
        provider.wait_exit(READY).is_some_and(|s| s.success()),
        "{}",
        provider.log()
    );
}

/// dynamic-ambassador's layout: `connect redis --discover etcd-keys:/services/redis` listens on
/// the service port of the first key `/services/redis/<port>/<id>/<ip>:<port>` put with
/// etcdctl, and reaches that address directly; deleting the key takes the backend away.
#[test]
fn dynamic_ambassador_keys_are_direct_backends() {
    if !etcd_installed() {
        return;
    }
    let etcd = Etcd::start();
    let mesh = Mesh::new();
    let redis = Redis::start(mesh.dir.path());
    let cons = unique("cons");
    let mut cmd = node_cmd(&mesh, &etcd, "connect", &cons);
    cmd.args([
        "redis",
        "--discover",
        "etcd-keys:/services/redis",
        "--wait",
        "1s",
    ]);
    let consumer = Proc::spawn(&format!("connect {cons}"), cmd);
    consumer.expect_log(
        &["watching the etcd registry", "prefix=/services/redis/"],
        READY,
    );
    // Another service's key under a longer name is not ours.
    etcd.ctl_ok(&["put", "/services/redis-cache/6379/x/127.0.0.1:1", ""]);
    let port = free_tcp_port();
    let key = format!("/services/redis/{port}/abc/127.0.0.1:{}", redis.port);
    etcd.ctl_ok(&["put", &key, "{}"]);
    consumer.expect_log(&["listening", &format!("listen=127.0.0.1:{port}")], READY);
    await_pong(port, "a dynamic-ambassador key");
    assert_eq!(redis_cli(port, &["SET", "seed", "ok"]), "OK");
    assert_eq!(redis_cli(redis.port, &["GET", "seed"]), "ok");
    etcd.ctl_ok(&["del", &key]);
    consumer.expect_log(&["etcd backends changed", "count=0"], READY);
    let gone = poll(READY, || {
        (redis_cli(port, &["PING"]) != "PONG").then_some(())
    });
    assert!(gone.is_some(), "the deleted backend is still used");
}

/// A malformed `--discover etcd-keys:` is a usage error: exit 2, one line saying what to write.
#[test]
fn malformed_etcd_keys_source_is_a_usage_error() {
    let mesh = Mesh::new();
    for bad in ["etcd-keys:services/redis", "etcd-keys:/", "etcd-keys:"] {
        let mut cmd = mesh.node_command("connect", &unique("cons"));
        cmd.args(["redis:16379", "--discover", bad]);
        let out = run(cmd, Duration::from_secs(10));
        assert_eq!(out.code(), 2, "{bad}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{bad}: {out:?}");
        assert!(
            out.stderr
                .contains("etcd-keys:/PREFIX (e.g. etcd-keys:/services/redis)"),
            "{bad}: {out:?}"
        );
    }
    let mut cmd = mesh.node_command("connect", &unique("cons"));
    cmd.args(["redis", "--registry", "127.0.0.1:2379"]);
    let out = run(cmd, Duration::from_secs(10));
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("expected etcd://HOST:PORT"), "{out:?}");
    // With mDNS off, a consumer of the mesh needs the registry.
    let mut cmd = command(mesh.dir.path());
    cmd.args(["connect", "redis", "--no-mdns", "--mesh-key-file"])
        .arg(&mesh.key_file);
    let out = run(cmd, Duration::from_secs(10));
    assert_eq!(out.code(), 2, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        out.stderr.contains("--registry etcd://HOST:PORT"),
        "{out:?}"
    );
}

/// etcd down: the consumer keeps serving through the instance it knows. etcd back with its
/// data: a provider started meanwhile is found. etcd back without its data: both providers
/// put their keys again within one lease period.
#[test]
fn an_etcd_outage_and_a_wiped_etcd() {
    if !etcd_installed() {
        return;
    }
    let mut etcd = Etcd::start();
    let mesh = Mesh::new();
    let redis = Redis::start(mesh.dir.path());
    let (a, b) = (unique("prov"), unique("prov"));
    let _pa = provider(&mesh, &etcd, &a, &redis);
    let cons = unique("cons");
    let (consumer, port) = consumer(&mesh, &etcd, &cons, &[]);
    await_pong(port, "before the outage");

    etcd.stop();
    consumer.expect_log(
        &["etcd registry unreachable", "keeping the instances known"],
        READY,
    );
    assert_eq!(
        redis_cli(port, &["PING"]),
        "PONG",
        "served through the known instance"
    );
    let mut cmd = node_cmd(&mesh, &etcd, "announce", &b);
    cmd.arg(format!("redis:6379=127.0.0.1:{}", redis.port));
    let pb = Proc::spawn(&format!("announce {b}"), cmd);
    pb.expect_log(&["etcd registry unreachable", "mDNS goes on"], READY);

    etcd.restart();
    consumer.expect_log(
        &[
            "discovered in the etcd registry",
            &format!("instance=redis@{b}_"),
        ],
        READY,
    );
    assert_eq!(redis_cli(port, &["PING"]), "PONG");

    etcd.restart_wiped();
    let lease = Duration::from_secs(10);
    await_keys(&etcd, "/ambassador/", lease, "both keys put again", |k| {
        [&a, &b].iter().all(|n| {
            k.iter()
                .any(|(key, _)| key.contains(&format!("/redis/{n}@")))
        })
    });
    assert_eq!(redis_cli(port, &["PING"]), "PONG");
}
