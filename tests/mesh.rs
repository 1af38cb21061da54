//! Mesh behaviour on loopback: another mesh is never reached, refused targets and missing
//! instances close only the client connection, `ls` lists what is announced, and a clean stop
//! withdraws the announcements.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use common::{
    Mesh, Proc, READY, Target, Tunnel, await_discovered, client, command, free_tcp_port, quic_port,
    read_to_end, run, unique,
};

/// Connects, sends a request, and returns what came back before the connection ended and how
/// long that took. A connection that the tunnel refuses gets no data.
fn try_exchange(addr: SocketAddr) -> (Vec<u8>, Option<std::io::Error>, Duration) {
    let start = Instant::now();
    let mut c = client(addr);
    // The write may fail if the connection is already closed: that is an answer too.
    let _ = c.write_all(b"PING\r\n");
    let (data, err) = read_to_end(&mut c);
    (data, err, start.elapsed())
}

/// A client connection to `addr` that the tunnel refuses: it gets no data, and is closed
/// within `limit`; `what` names the case in the messages.
fn assert_closed_without_data(addr: SocketAddr, limit: Duration, what: &str) {
    let (data, _err, took) = try_exchange(addr);
    assert!(data.is_empty(), "{what}: got data: {data:?}");
    assert!(took < limit, "{what}: client connection held {took:?}");
}

/// No peer ever connected to `provider` (it logged no "peer connected").
fn assert_no_peer_connected(provider: &Proc) {
    assert!(
        provider
            .find_log(&["peer connected"], Duration::ZERO)
            .is_none(),
        "provider log:\n{}",
        provider.log()
    );
}

/// One request/response through the echo target.
fn echo_works(addr: SocketAddr) {
    let mut c = client(addr);
    c.write_all(b"are you there?").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (data, err) = read_to_end(&mut c);
    assert!(err.is_none(), "echo read error: {err:?}");
    assert_eq!(data, b"are you there?");
}

#[test]
fn another_mesh_is_never_reached() {
    let ours = Mesh::new();
    let theirs = Mesh::new();
    let target = Target::echo();
    let (provider, prov) = theirs.announce_echo(&target);

    // Discovery: the record of the other mesh is seen and ignored.
    let (consumer, addr) = ours.connect(&unique("cons"), "echo", &["--wait", "1s"]);
    consumer.expect_log(&["another mesh", &format!("instance=echo@{prov}_")], READY);
    for _ in 0..5 {
        assert_closed_without_data(addr, Duration::from_secs(5), "another mesh");
    }
    consumer.expect_log(&["no instance of echo"], READY);
    assert_no_peer_connected(&provider);

    // A fixed backend: the handshake itself is refused, on both sides.
    let backend = format!("127.0.0.1:{}", quic_port(theirs.dir.path(), &prov));
    let (direct, addr) = ours.connect(
        &unique("cons"),
        "echo",
        &["--wait", "1s", "--backend", &backend],
    );
    let what = "a handshake with another mesh";
    assert_closed_without_data(addr, Duration::from_secs(10), what);
    provider.expect_log(&["refused a QUIC handshake"], READY);
    direct.expect_log(&["handshake"], READY);
    assert_no_peer_connected(&provider);

    assert_eq!(
        target.received(),
        0,
        "bytes reached the other mesh's target"
    );
    drop((direct, consumer, provider));
}

#[test]
fn refused_target_closes_only_that_connection() {
    let mesh = Mesh::new();
    let live = Target::echo();
    let gone = Target::echo(); // up when announced, closed before the client comes
    let dead_port = free_tcp_port(); // nothing ever listens there
    let prov = unique("prov");
    let provider = mesh.announce(
        &prov,
        &[
            format!("dead:{dead_port}=127.0.0.1:{dead_port}"),
            format!("gone:{0}=127.0.0.1:{0}", gone.port()),
            format!("live:{0}=127.0.0.1:{0}", live.port()),
        ],
        &[],
    );
    // After a refusal the consumer may wait for another instance up to its --wait bound.
    let (mut consumer, addrs) = mesh.connect_many(
        &unique("cons"),
        &["dead", "gone", "live"],
        &["--wait", "1s"],
    );
    for service in ["dead", "gone", "live"] {
        await_discovered(&consumer, service, &prov);
    }
    drop(gone);

    for (service, addr) in [("dead", addrs[0]), ("gone", addrs[1])] {
        for _ in 0..3 {
            let what = format!("{service} (a refused target)");
            assert_closed_without_data(addr, Duration::from_secs(5), &what);
        }
        // A log line says why the client connection was closed.
        consumer.expect_log(&["closing the client connection", service], READY);
    }
    assert!(
        consumer.try_wait().is_none(),
        "consumer exited:\n{}",
        consumer.log()
    );
    assert!(
        provider.find_log(&["panic"], Duration::ZERO).is_none(),
        "{}",
        provider.log()
    );

    // The other service on the same nodes still works.
    echo_works(addrs[2]);
    echo_works(addrs[2]);
}

#[test]
fn no_instance_closes_the_client_after_the_wait_bound() {
    let mesh = Mesh::new();
    let ghost = unique("ghost");
    let (consumer, addr) = mesh.connect(&unique("cons"), &ghost, &["--wait", "1s"]);
    let (data, _err, took) = try_exchange(addr);
    assert!(data.is_empty(), "got data: {data:?}");
    assert!(
        took >= Duration::from_millis(500) && took <= Duration::from_secs(5),
        "client connection closed after {took:?}, expected about 1 s"
    );
    consumer.expect_log(&["no instance", &ghost], READY);
}

#[test]
fn ls_json_lists_an_announced_service() {
    // The mesh key comes from XDG_CONFIG_HOME here, as for a user who never passed a key.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["mesh", "show"]);
    assert_eq!(run(cmd, Duration::from_secs(10)).code(), 0);

    let target = Target::echo();
    let prov = unique("prov");
    let service = unique("lsvc");
    let advertised = 4242u16;
    let mut cmd = command(dir.path());
    cmd.args(["announce", "--interface", "lo", "--node", &prov])
        .arg(format!(
            "{service}:{advertised}=127.0.0.1:{}",
            target.port()
        ));
    let provider = Proc::spawn("announce", cmd);
    provider.expect_log(&["announcing", &format!("service={service} ")], READY);
    let quic = quic_port(dir.path(), &prov);

    let ls = |mut cmd: std::process::Command| -> Option<serde_json::Value> {
        cmd.args(["ls", "--json", "--interface", "lo"]);
        let out = run(cmd, Duration::from_secs(15));
        assert_eq!(out.code(), 0, "{out:?}");
        assert!(
            out.elapsed < Duration::from_secs(6),
            "ls took {:?}",
            out.elapsed
        );
        let rows: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("ls --json: {e}: {}", out.stdout));
        rows.as_array()
            .expect("a JSON array")
            .iter()
            .find(|r| r["node"] == prov.as_str())
            .cloned()
    };

    let row =
        ls(command(dir.path())).unwrap_or_else(|| panic!("ls --json did not list node {prov}"));
    assert_eq!(row["service"], service.as_str(), "{row}");
    assert_eq!(row["port"], advertised, "{row}");
    assert_eq!(row["quic_port"], quic, "{row}");
    let addrs = row["addrs"]
        .as_array()
        .unwrap_or_else(|| panic!("no addrs: {row}"));
    assert!(addrs.iter().any(|a| a == "127.0.0.1"), "{row}");
    assert_eq!(row["mesh_match"], true, "{row}");

    // With another mesh's key: listed, but not ours.
    let other = Mesh::new();
    let mut cmd = command(other.dir.path());
    cmd.arg("--mesh-key-file").arg(&other.key_file);
    let row = ls(cmd).unwrap_or_else(|| panic!("ls --json (other mesh) did not list node {prov}"));
    assert_eq!(row["mesh_match"], false, "{row}");
    // With no key at all: listed, no match claimed, and ls creates no key.
    let empty = tempfile::tempdir().unwrap();
    let row = ls(command(empty.path()))
        .unwrap_or_else(|| panic!("ls --json (no key) did not list node {prov}"));
    assert_ne!(row["mesh_match"], true, "{row}");
    assert!(
        !empty.path().join("ambassador").exists(),
        "ls created a mesh key"
    );

    // The table form names the service and the node.
    let mut cmd = command(dir.path());
    cmd.args(["ls", "--interface", "lo"]);
    let out = run(cmd, Duration::from_secs(15));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains(&service) && l.contains(&prov)),
        "{}",
        out.stdout
    );
}

#[test]
fn sigterm_withdraws_and_exits_zero() {
    // Every part is bound: a part left out would be dropped (stopped) at once.
    let Tunnel {
        mut provider,
        provider_node: prov,
        mut consumer,
        addr,
        target: _target,
        mesh: _mesh,
    } = Tunnel::new(Target::echo());
    echo_works(addr);

    let start = Instant::now();
    provider.signal("TERM");
    let status = provider.wait_exit(Duration::from_secs(3));
    assert!(
        status.is_some(),
        "announce still running 3 s after SIGTERM:\n{}",
        provider.log()
    );
    assert_eq!(
        status.unwrap().code(),
        Some(0),
        "announce exit after SIGTERM:\n{}",
        provider.log()
    );
    let left = Duration::from_secs(3).saturating_sub(start.elapsed());
    consumer.expect_log(
        &["withdrawn", &format!("echo@{prov}_")],
        left.max(Duration::from_millis(500)),
    );

    // The consumer stops the same way.
    consumer.signal("INT");
    let status = consumer.wait_exit(Duration::from_secs(3));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "connect after SIGINT:\n{}",
        consumer.log()
    );
    let mut buf = [0u8; 1];
    assert!(
        std::net::TcpStream::connect(addr)
            .and_then(|mut s| s.read(&mut buf))
            .map_or(true, |n| n == 0),
        "listener still serving after stop"
    );
}
