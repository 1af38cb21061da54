//! A multi-homed provider with a dead address (issue "Discovery you can trust", point 3): the
//! consumer dials every address of an instance, staggered, so an address that never answers
//! costs the stagger, not a handshake timeout.
//!
//! Provider B has a second address on its LAN interface that its own nftables drops: the record
//! lists it (mDNS announces every address of the interface), A's datagrams to it get no answer.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::harness::{Host, Lan, MS, SEC, ip_in, report, wait_until};
use crate::nodes::ls_service;

/// Fresh consumers measured.
const ROUNDS: usize = 10;

/// The bound on each fresh consumer's first connection.
const BOUND: Duration = Duration::from_millis(250);

/// One client on its host: connects to 127.0.0.1:6379 and PINGs until PONG (a failed attempt
/// is retried at once, up to 20 s); prints the milliseconds from the start of the first
/// connection to the PONG.
const FIRST_PONG: &str = r#"
import socket, sys, time
t0 = time.monotonic()
while True:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=20) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                break
    except OSError:
        pass
    if time.monotonic() - t0 > 20:
        sys.exit("no PONG within 20 s")
print((time.monotonic() - t0) * 1000)
"#;

/// Gives `host` a second address on its LAN interface and drops every packet to it (nftables
/// in its namespace, gone with it): announced, never answering. The address is in the LAN's
/// subnet below every host's (10.77.X.10 and up), so it is the one dialled first (IPv4
/// addresses are ordered ascending).
fn add_dead_address(lan: &Lan, host: &Host) -> Ipv4Addr {
    let [p, q, x, _] = host.ip.octets();
    let dead = Ipv4Addr::new(p, q, x, 5);
    ip_in(&host.ns, &format!("addr add {dead}/24 dev {}", host.ifname));
    let rules = format!(
        "add table inet multihomed; \
         add chain inet multihomed input {{ type filter hook input priority 0; }}; \
         add rule inet multihomed input ip daddr {dead} drop"
    );
    lan.must_run(host, &["nft", &rules]);
    dead
}

/// Starts a fresh consumer of `redis` on `a`, waits until it has discovered the instance (its
/// listener, on the advertised port, comes up then), times the first client connection, and
/// stops the consumer. Returns the time, and the consumer's `discovered` log line.
fn first_connection(lan: &Lan, a: &Host, key: &std::path::Path, round: usize) -> (f64, String) {
    let connect = lan
        .connect(a, key)
        .spec("redis")
        .label(&format!("connect-a-{round}"))
        .start();
    assert!(
        lan.wait_tcp_listen(a, 6379, 15 * SEC),
        "round {round}: the consumer did not discover the instance"
    );
    let out = lan.run(a, 30 * SEC, &["python3", "-c", FIRST_PONG]);
    assert!(out.ok(), "round {round}: the client failed: {out:?}");
    let ms: f64 = out
        .stdout
        .trim()
        .parse()
        .expect("the client prints milliseconds");
    let discovered = lan.log_line(&connect, "discovered");
    lan.signal(&connect, "TERM");
    lan.wait_clean_exit(&connect, 10 * SEC, "the consumer stopping");
    (ms, discovered)
}

/// Ten fresh consumers each connect to a provider whose first-dialled address is dead: every
/// first connection takes under 250 ms (one address at a time, it took the ~3 s the dead
/// address's handshake waits).
#[test]
fn a_dead_address_of_a_multihomed_provider_costs_no_timeout() {
    let (lan, [a, b]) = lan!("a", "b");
    let key = lan.mesh_key("mesh");
    let dead = add_dead_address(&lan, &b);
    lan.redis(&b, 6379).start();
    lan.announce(&b, &key).spec("redis:6379").start();
    let (dead_s, live_s) = (dead.to_string(), b.ip.to_string());
    let both = wait_until(15 * SEC, 100 * MS, || {
        ls_service(&lan, &a, &key, "redis").iter().any(|r| {
            let addrs = r["addrs"].as_array().cloned().unwrap_or_default();
            addrs.first().and_then(|v| v.as_str()) == Some(dead_s.as_str())
                && addrs.iter().any(|v| v.as_str() == Some(live_s.as_str()))
        })
    });
    assert!(
        both,
        "B's record does not list {dead} first and {live_s}: {:?}",
        ls_service(&lan, &a, &key, "redis")
    );

    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let (ms, discovered) = first_connection(&lan, &a, &key, round);
        assert!(
            discovered.contains(&dead_s) && discovered.contains(&live_s),
            "round {round}: the consumer discovered other addresses: {discovered}"
        );
        times.push(ms);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[ROUNDS / 2 - 1] + sorted[ROUNDS / 2]) / 2.0;
    report(&format!(
        "FIGURE multi-homed provider with a dead first address, first connection of {ROUNDS} fresh consumers: median {median:.1} ms, max {:.1} ms (all: {:?})",
        sorted[ROUNDS - 1],
        times.iter().map(|t| t.round()).collect::<Vec<_>>()
    ));
    for (round, ms) in times.iter().enumerate() {
        assert!(
            *ms < BOUND.as_secs_f64() * 1000.0,
            "round {round}: the first connection took {ms:.1} ms (bound {BOUND:?}): {times:?}"
        );
    }
}
