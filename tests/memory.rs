//! Memory comes back (issue 16, point 4): after 10,000 connections through a provider and a
//! consumer of a real `redis-server` have been held at once and closed, each ambassador's
//! resident size falls back to at most twice what it was idle, within 30 seconds.
//!
//! Idle is measured after one PING went through the pair (the pooled QUIC connection is up).
//! The 10,000 connections each do one PING/PONG, so their tunnel streams exist end to end, and
//! are all open at once before any closes. The test needs about 10,100 open files in each of
//! its processes: it raises its soft limit to the hard one (and the hard one too, as root), and
//! says SKIPPED when that is not enough.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::redis::{Redis, poll};
use common::{Mesh, READY, rss_kib, unique};

/// Connections held at once.
const CONNECTIONS: usize = 10_000;

/// Opened (and PINGed) this many at a time.
const BATCH: usize = 250;

/// Open files each process needs: the connections, and room for the rest.
const FILES: u64 = CONNECTIONS as u64 + 1_000;

/// How long the nodes have to give the memory back.
const GIVE_BACK: Duration = Duration::from_secs(30);

/// Raises this process's open-file limit (its children inherit it); false if it stays below
/// what the test needs.
fn raise_file_limit() -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return false;
        }
        if lim.rlim_max < FILES {
            // Only root may raise the hard limit; a refusal leaves it as it was.
            let raised = libc::rlimit {
                rlim_cur: FILES,
                rlim_max: FILES,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return true;
            }
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur >= FILES
    }
}

/// Reads the `+PONG` that answers a PING written on `s`.
fn ping(s: &mut TcpStream) -> std::io::Result<()> {
    let mut got = [0u8; 7];
    s.read_exact(&mut got)?;
    if &got != b"+PONG\r\n" {
        return Err(std::io::Error::other(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&got)
        )));
    }
    Ok(())
}

/// Opens `n` connections to `addr`, `BATCH` at a time, each answered with `+PONG`.
fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let batch: Vec<TcpStream> = (0..BATCH.min(n - held.len()))
            .map(|i| {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("connection {}: {e}", held.len() + i));
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(b"PING\r\n").unwrap();
                s
            })
            .collect();
        for (i, mut s) in batch.into_iter().enumerate() {
            ping(&mut s).unwrap_or_else(|e| panic!("connection {}: {e}", held.len() + i));
            held.push(s);
        }
    }
    held
}

#[test]
fn memory_comes_back_after_ten_thousand_connections() {
    if !raise_file_limit() {
        eprintln!(
            "SKIPPED: the memory test needs {FILES} open files (ulimit -n), as root or with a higher hard limit"
        );
        return;
    }
    let mesh = Mesh::new();
    let maxclients = (CONNECTIONS + 100).to_string();
    let redis = Redis::start_with(mesh.dir.path(), &["--maxclients", &maxclients]);
    let service = unique("mem");
    let spec = format!("{service}:{0}=127.0.0.1:{0}", redis.port);
    let provider = mesh.announce(&unique("memp"), &[spec], &[]);
    let (consumer, addr) = mesh.connect(&unique("memc"), &service, &["--wait", "15s"]);
    let mut first = TcpStream::connect(addr).expect("first connection");
    first.set_read_timeout(Some(READY)).unwrap();
    first.write_all(b"PING\r\n").unwrap();
    ping(&mut first).expect("a PING through the pair");
    drop(first);

    let (cons, prov) = (consumer.pid(), provider.pid());
    let idle = (rss_kib(cons), rss_kib(prov));
    let started = Instant::now();
    let held = hold(addr, CONNECTIONS);
    let loaded = (rss_kib(cons), rss_kib(prov));
    eprintln!(
        "{CONNECTIONS} connections held after {:.1?}: RSS consumer {} KiB (idle {}), provider {} KiB (idle {})",
        started.elapsed(),
        loaded.0,
        idle.0,
        loaded.1,
        idle.1
    );
    drop(held);
    let closed = Instant::now();
    let back = poll(GIVE_BACK, || {
        let now = (rss_kib(cons), rss_kib(prov));
        (now.0 <= 2 * idle.0 && now.1 <= 2 * idle.1).then_some(now)
    });
    let now = (rss_kib(cons), rss_kib(prov));
    assert!(
        back.is_some(),
        "{GIVE_BACK:?} after closing {CONNECTIONS} connections: consumer {} KiB (idle {}, {:.2}x), provider {} KiB (idle {}, {:.2}x); want at most 2x",
        now.0,
        idle.0,
        now.0 as f64 / idle.0 as f64,
        now.1,
        idle.1,
        now.1 as f64 / idle.1 as f64
    );
    eprintln!(
        "back to consumer {} KiB ({:.2}x idle), provider {} KiB ({:.2}x idle) {:.1?} after the close",
        now.0,
        now.0 as f64 / idle.0 as f64,
        now.1,
        now.1 as f64 / idle.1 as f64,
        closed.elapsed()
    );

    // The pair still serves, on whatever connection it now pools.
    let mut again = TcpStream::connect(addr).expect("connection after the release");
    again.set_read_timeout(Some(READY)).unwrap();
    again.write_all(b"PING\r\n").unwrap();
    ping(&mut again).expect("a PING after the release");
}
