//! Discovery you can trust (point 7, "found at once, even right after a start"): a consumer
//! started together with its provider, or within a second of another consumer's query, knows
//! the instance at once, although the provider multicasts a record at most once a second.
//!
//! Each round starts the provider on B and the consumer on A at the same moment, with a client
//! on A already trying to reach the consumer's fixed port; the figure is the time from the
//! start to the client's first PONG. Right after that first PONG (so within a second of A's
//! query and of B's announcement), a second consumer starts on C, and its first PONG is timed
//! the same way. Then everything of the round stops.

use std::time::Duration;

use crate::harness::{Host, Lan, Proc, SEC, now_epoch, report};

/// Rounds of each measurement.
const ROUNDS: usize = 20;

/// The consumers' fixed listen port.
const PORT: u16 = 16379;

/// The issue's bound on the median time from start to first success.
const BOUND: Duration = Duration::from_millis(250);

/// A client that tries `PING` through `127.0.0.1:PORT` every 2 ms until the first `PONG`;
/// prints `ready` once it runs and `pong <epoch seconds>` at its first PONG, then exits (exit 1
/// after LIMIT seconds without one).
const FIRST_PONG: &str = r#"
import socket, sys, time
port, limit = int(sys.argv[1]), float(sys.argv[2])
print("ready", flush=True)
end = time.time() + limit
while time.time() < end:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    except OSError:
        time.sleep(0.002)
        continue
    try:
        s.sendall(b"PING\r\n")
        if s.makefile("rb").readline() == b"+PONG\r\n":
            print("pong %.6f" % time.time(), flush=True)
            sys.exit(0)
    except OSError:
        pass
    finally:
        s.close()
    time.sleep(0.002)
sys.exit(1)
"#;

/// A [`FIRST_PONG`] client running on a host.
struct FirstPong {
    proc: Proc,
}

impl FirstPong {
    /// Starts the client on `host` and waits until it runs.
    fn start(lan: &Lan, host: &Host, label: &str) -> FirstPong {
        let script = lan.path("first-pong.py");
        if !script.exists() {
            std::fs::write(&script, FIRST_PONG).expect("write the client script");
        }
        let proc = lan.spawn(
            host,
            label,
            &["python3", script.to_str().unwrap(), &PORT.to_string(), "10"],
        );
        assert!(
            lan.wait_log(&proc, "ready", 10 * SEC),
            "the client {label} did not start: {}",
            lan.log(&proc)
        );
        FirstPong { proc }
    }

    /// Waits for the first PONG; how long after `t0` (epoch seconds) it came.
    fn latency(&self, lan: &Lan, t0: f64, what: &str) -> Duration {
        let status = lan.wait_exit(&self.proc, 15 * SEC);
        let log = lan.log(&self.proc);
        let at: f64 = log
            .lines()
            .find_map(|l| l.strip_prefix("pong "))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("{what}: no PONG through the consumer ({status:?}): {log}"));
        Duration::from_secs_f64((at - t0).max(0.0))
    }
}

/// Median, 90th percentile and maximum of `samples`.
fn stats(samples: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = samples.to_vec();
    s.sort();
    let n = s.len();
    let median = (s[(n - 1) / 2] + s[n / 2]) / 2;
    let p90 = s[(n * 9).div_ceil(10) - 1];
    (median, p90, s[n - 1])
}

/// Prints the FIGURE line of one measurement; returns its median.
fn figure(name: &str, samples: &[Duration], what: &str) -> Duration {
    let (median, p90, max) = stats(samples);
    let ms = |d: Duration| d.as_millis();
    report(&format!(
        "FIGURE {name}: median {} ms, p90 {} ms, max {} ms ({} rounds: {what})",
        ms(median),
        ms(p90),
        ms(max),
        samples.len()
    ));
    median
}

/// Stops the processes of one round (SIGKILL: each round starts fresh processes, whose mDNS
/// caches start empty) and waits until they are gone.
fn stop(lan: &Lan, procs: &[&Proc]) {
    for p in procs {
        lan.signal(p, "KILL");
    }
    for p in procs {
        assert!(
            lan.wait_exit(p, 10 * SEC).is_some(),
            "{} survived SIGKILL",
            p.label
        );
    }
}

/// Point 7, found at once: 20 rounds of provider (B) and consumer (A) started together, each
/// followed by a second consumer (C) started right after A's first connection; start → first
/// PONG.
#[test]
fn found_at_once_after_a_start() {
    if !crate::harness::have_tools(&["redis-server", "python3"], "found at once") {
        return;
    }
    let (lan, [a, b, c]) = lan!("a", "b", "c");
    let key = lan.mesh_key("mesh");
    lan.redis(&b, 6379).start();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let client_a = FirstPong::start(&lan, &a, &format!("client-a-{round}"));
        let client_c = FirstPong::start(&lan, &c, &format!("client-c-{round}"));
        let t0 = now_epoch();
        let provider = lan
            .announce(&b, &key)
            .spec("redis:6379")
            .label(&format!("announce-b-{round}"))
            .start();
        let consumer_a = lan
            .connect(&a, &key)
            .spec(&format!("redis:{PORT}"))
            .label(&format!("connect-a-{round}"))
            .start();
        first.push(client_a.latency(&lan, t0, "consumer A started with the provider"));
        // Within a second of A's query (and of B's announcement); C is limited to its LAN
        // interface, which the one-shot queries must respect too.
        let t1 = now_epoch();
        let consumer_c = lan
            .connect(&c, &key)
            .spec(&format!("redis:{PORT}"))
            .label(&format!("connect-c-{round}"))
            .args(&["--interface", &c.ifname])
            .start();
        second.push(client_c.latency(&lan, t1, "consumer C started after A's query"));
        stop(&lan, &[&provider, &consumer_a, &consumer_c]);
    }
    let m1 = figure(
        "found-at-once provider-and-consumer-started-together",
        &first,
        "`announce` on B and `connect` on A spawned together, to the first PONG through A",
    );
    let m2 = figure(
        "found-at-once second-consumer-after-a-query",
        &second,
        "`connect` on C spawned right after A's first PONG, to the first PONG through C",
    );
    assert!(
        m1 < BOUND,
        "a consumer started with its provider took {m1:?} (median) to reach it; the bound is {BOUND:?}"
    );
    assert!(
        m2 < BOUND,
        "a consumer started after another one's query took {m2:?} (median) to reach it; the bound is {BOUND:?}"
    );
}
