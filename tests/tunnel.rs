//! The tunnel on loopback: a provider (`announce`) and a consumer (`connect`) of one mesh carry
//! TCP connections to a target written here, byte-exact, with half-close and reset mapped.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::redis::poll;
use common::{Target, Tunnel, client, has_request, read_to_end};
use sha2::{Digest, Sha256};

/// A deterministic pseudo-random byte stream (xorshift64*), so both ends can hash it.
struct Gen(u64);

impl Gen {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `len` bytes of `Gen(seed)`, then half-closes; returns the SHA-256 of what was sent.
fn send_stream(mut s: TcpStream, seed: u64, len: usize) -> [u8; 32] {
    let mut stream = Gen(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        stream.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        s.write_all(&buf[..n]).expect("write");
        left -= n;
    }
    s.shutdown(Shutdown::Write).expect("shutdown write");
    hash.finalize().into()
}

/// Reads to EOF; returns the byte count and SHA-256 (an error fails the test).
fn recv_stream(s: &mut TcpStream) -> (usize, [u8; 32]) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (total, hash.finalize().into()),
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed after {total} bytes: {e}"),
        }
    }
}

const BULK: usize = 64 << 20;

#[test]
fn bulk_transfer_each_way_is_byte_exact() {
    // The target sends its own stream while it hashes what it receives.
    let (tx, rx) = mpsc::channel::<((usize, [u8; 32]), [u8; 32])>();
    let tx = Mutex::new(tx);
    let target = Target::start(move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        if !has_request(&s) {
            return;
        }
        let w = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || send_stream(w, 2, BULK));
        let got = recv_stream(&mut s);
        let sent = sender.join().unwrap();
        let _ = tx.lock().unwrap().send((got, sent));
    });
    let t = Tunnel::new(target);

    let mut c = client(t.addr);
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let w = c.try_clone().unwrap();
    let sender = std::thread::spawn(move || send_stream(w, 1, BULK));
    let (down_len, down_hash) = recv_stream(&mut c);
    let up_sent = sender.join().unwrap();
    let ((up_len, up_hash), down_sent) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("target report");

    assert_eq!(up_len, BULK, "target received a different byte count");
    assert_eq!(up_hash, up_sent, "client→target bytes differ (SHA-256)");
    assert_eq!(down_len, BULK, "client received a different byte count");
    assert_eq!(down_hash, down_sent, "target→client bytes differ (SHA-256)");
}

#[test]
fn half_close_is_carried_both_ways() {
    let request: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let reply: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let tx = Mutex::new(tx);
    let reply2 = reply.clone();
    let target = Target::start(move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        if !has_request(&s) {
            return;
        }
        // The reply goes out only after EOF: the client's half-close must arrive as one.
        let (got, err) = read_to_end(&mut s);
        assert!(err.is_none(), "target read error: {err:?}");
        let _ = tx.lock().unwrap().send(got);
        s.write_all(&reply2).unwrap();
        // Dropping the socket closes it: the client must see EOF after the reply.
    });
    let t = Tunnel::new(target);

    let mut c = client(t.addr);
    c.write_all(&request).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("target never saw EOF after the request");
    assert_eq!(got.len(), request.len(), "request length at the target");
    assert!(got == request, "target got different request bytes");
    let (back, err) = read_to_end(&mut c);
    assert!(err.is_none(), "client read error after half-close: {err:?}");
    assert_eq!(back.len(), reply.len(), "reply length at the client");
    assert!(back == reply, "client got different reply bytes");
}

/// What `far` read after `near` reset its connection, `(data, error)`: no data, and the reset
/// itself (ECONNRESET), not a clean EOF.
fn assert_reset((data, err): (Vec<u8>, Option<std::io::Error>), near: &str, far: &str) {
    assert!(data.is_empty(), "{far} got data: {data:?}");
    match err {
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!(
            "{near} reset its connection but the {far} saw {other:?} (a clean EOF if None), not ECONNRESET"
        ),
    }
}

fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s); // RST instead of FIN
}

#[test]
fn target_reset_reaches_the_client_as_a_reset() {
    let target = Target::start(|mut s| {
        let mut hello = [0u8; 5];
        if s.read_exact(&mut hello).is_ok() {
            reset(s);
        }
    });
    let t = Tunnel::new(target);

    let mut c = client(t.addr);
    c.write_all(b"hello").unwrap();
    assert_reset(read_to_end(&mut c), "target", "client");
}

#[test]
fn client_reset_reaches_the_target_as_a_reset() {
    let (tx, rx) = mpsc::channel::<&'static str>();
    let tx = Mutex::new(tx);
    let (res_tx, res_rx) = mpsc::channel::<(Vec<u8>, Option<std::io::Error>)>();
    let res_tx = Mutex::new(res_tx);
    let target = Target::start(move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut hello = [0u8; 5];
        if s.read_exact(&mut hello).is_err() {
            return;
        }
        let _ = tx.lock().unwrap().send("got hello");
        let _ = res_tx.lock().unwrap().send(read_to_end(&mut s));
    });
    let t = Tunnel::new(target);

    let mut c = client(t.addr);
    c.write_all(b"hello").unwrap();
    rx.recv_timeout(Duration::from_secs(30))
        .expect("target got the first bytes");
    reset(c);
    let end = res_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("target never saw the end of the connection");
    assert_reset(end, "client", "target");
}

#[test]
fn target_that_speaks_first_is_connected_at_once() {
    // SMTP-like: the target sends a banner before the client sends anything.
    let target = Target::start(|mut s| {
        let _ = s.write_all(b"220 hello\r\n");
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf); // hold the connection until the client goes
    });
    let t = Tunnel::new(target);
    let mut c = client(t.addr);
    let mut banner = [0u8; 11];
    c.read_exact(&mut banner)
        .expect("banner through the tunnel before the client sent a byte");
    assert_eq!(&banner, b"220 hello\r\n");
}

#[test]
fn many_concurrent_connections_and_a_stalled_one() {
    const N: usize = 200;
    let mut t = Tunnel::new(Target::echo());

    // A client that connects and then sends nothing, held open throughout.
    let mut stalled = client(t.addr);

    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let (addr, barrier) = (t.addr, barrier.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10));
                // Every connection is open (one stream each) before any of them talks. Every
                // thread reaches the barrier, even one that failed to connect.
                barrier.wait();
                let mut c = conn.map_err(|e| format!("conn {i}: connect: {e}"))?;
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let msg: Vec<u8> = format!("request {i} ").repeat(100).into_bytes();
                c.write_all(&msg)
                    .map_err(|e| format!("conn {i}: write: {e}"))?;
                let mut back = vec![0u8; msg.len()];
                c.read_exact(&mut back)
                    .map_err(|e| format!("conn {i}: read: {e}"))?;
                if back != msg {
                    return Err(format!("conn {i}: echoed bytes differ"));
                }
                c.shutdown(Shutdown::Write)
                    .map_err(|e| format!("conn {i}: shutdown: {e}"))?;
                let (rest, err) = read_to_end(&mut c);
                if !rest.is_empty() || err.is_some() {
                    return Err(format!(
                        "conn {i}: end: extra {} bytes, {err:?}",
                        rest.len()
                    ));
                }
                Ok(())
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|h| h.join().unwrap().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {N} connections failed: {failures:?}",
        failures.len()
    );

    // The stalled connection is still alive and works when it finally talks.
    stalled.write_all(b"late").unwrap();
    let mut back = [0u8; 4];
    stalled
        .read_exact(&mut back)
        .expect("stalled connection still works");
    assert_eq!(&back, b"late");
    let sent: usize = (0..N)
        .map(|i| format!("request {i} ").len() * 100)
        .sum::<usize>()
        + 4;
    assert_eq!(t.target.received(), sent, "bytes that reached the target");
    // One QUIC connection carried them all: no handshake per TCP connection.
    let handshakes = t
        .provider
        .log()
        .lines()
        .filter(|l| l.contains("peer connected"))
        .count();
    assert_eq!(handshakes, 1, "provider log:\n{}", t.provider.log());
    assert!(t.consumer.try_wait().is_none(), "consumer died");
}

#[test]
fn parallel_downloads_share_the_tunnel_evenly() {
    // Eight clients download at once through one tunnel (one QUIC connection): each gets a
    // fair share, none is starved by the others.
    const N: usize = 8;
    const MEASURED: u64 = 256 << 20;
    let target = Target::start(|mut s| {
        if !has_request(&s) {
            return;
        }
        let mut buf = vec![0u8; 256 * 1024];
        Gen(3).fill(&mut buf);
        while s.write_all(&buf).is_ok() {}
    });
    let t = Tunnel::new(target);
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..N).map(|_| Default::default()).collect());
    let done = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(N));
    let readers: Vec<_> = (0..N)
        .map(|i| {
            let (addr, counts, done, barrier) =
                (t.addr, counts.clone(), done.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = client(addr);
                // Every download starts once all the connections are open.
                barrier.wait();
                c.write_all(b"GET").expect("request");
                let mut buf = vec![0u8; 256 * 1024];
                while !done.load(Ordering::Relaxed) {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            counts[i].fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let snapshot = || -> Vec<u64> { counts.iter().map(|c| c.load(Ordering::Relaxed)).collect() };
    let total = |v: &[u64]| v.iter().sum::<u64>();
    // Past the start (every connection's first window), then the measured stretch.
    let until = |bytes: u64| {
        poll(Duration::from_secs(60), || {
            let now = snapshot();
            (total(&now) >= bytes).then_some(now)
        })
        .expect("the downloads stalled")
    };
    let start = until(32 << 20);
    let end = until(total(&start) + MEASURED);
    done.store(true, Ordering::Relaxed);
    drop(t);
    for r in readers {
        let _ = r.join();
    }
    let shares: Vec<u64> = end.iter().zip(&start).map(|(e, s)| e - s).collect();
    let (min, max) = (
        *shares.iter().min().expect("N > 0"),
        *shares.iter().max().expect("N > 0"),
    );
    assert!(
        min * 4 >= max,
        "bytes per download over {} MiB: {shares:?} (the least served got under a quarter of the most)",
        MEASURED >> 20
    );
}
