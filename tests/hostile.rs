//! Hostile streams from a mesh member (issue 5, point 6), on loopback: a peer that holds a valid
//! certificate of the mesh opens streams and never finishes the header, or sends a malformed,
//! oversized or unknown-version header. Each costs that stream only: it gets a typed refusal,
//! the provider logs why, its memory stays bounded, and the tunnel keeps serving a real
//! consumer throughout.
//!
//! The hostile peer is a QUIC client of our own built from the library (standard tools cannot
//! hold a mesh certificate), so the test speaks the wire protocol byte by byte.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ambassador::identity::{ANY_NODE_SAN, DenyList, MeshKey, MeshRoot};
use ambassador::names::NodeName;
use ambassador::transport::protocol::{RefusalCode, Reply};
use ambassador::transport::{TransportSettings, client_config};
use common::{Target, Tunnel, quic_port, rss_kib};

/// Silent streams the hostile peer holds open at once.
const SILENT: usize = 1500;
/// Streams of one connection the provider lets wait for their header
/// (`MAX_AWAITING_HEADER` in src/proxy/provider.rs).
const AWAITING_CAP: usize = 1024;

/// One exchange through the consumer: the echo target must send the line back.
fn echo_once(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"still here\n").map_err(|e| e.to_string())?;
    let mut got = [0u8; 11];
    s.read_exact(&mut got).map_err(|e| e.to_string())?;
    if &got == b"still here\n" {
        Ok(())
    } else {
        Err(format!("echo answered {got:?}"))
    }
}

/// Opens a stream, sends `bytes` (keeping the stream open) and returns it with the reply task.
async fn send_raw(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> (
    quinn::SendStream,
    tokio::task::JoinHandle<Result<Reply, String>>,
) {
    let (mut send, mut recv) = conn.open_bi().await.expect("open_bi");
    send.write_all(bytes).await.expect("write header bytes");
    let reply = tokio::spawn(async move {
        Reply::read_from(&mut recv, Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())
    });
    (send, reply)
}

fn expect_bad_request(what: &str, got: Result<Reply, String>, detail: &str) {
    match got {
        Ok(Reply::Refused(r)) => {
            assert_eq!(r.code, RefusalCode::BadRequest, "{what}: refused as {r}");
            assert!(
                r.detail.contains(detail),
                "{what}: the refusal says {:?}, not {detail:?}",
                r.detail
            );
        }
        other => panic!("{what}: expected a bad-request refusal, got {other:?}"),
    }
}

#[test]
fn silent_and_malformed_streams_cost_only_themselves() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tunnel = Tunnel::new(Target::echo());
    let (provider, mesh, addr) = (&tunnel.provider, &tunnel.mesh, tunnel.addr);
    let port = quic_port(mesh.dir.path(), &tunnel.provider_node);
    echo_once(addr).expect("the tunnel works before the hostile peer comes");
    let rss_before = rss_kib(provider.pid());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let provider_pid = provider.pid();
    let key_text = mesh.key_text();
    let (rss_peak, malformed) = rt.block_on(async move {
        // A mesh member: its certificate chains to the mesh root like any node's.
        let key = MeshKey::parse(&key_text).expect("mesh key");
        let root = MeshRoot::derive(&key).expect("mesh root");
        let identity = root
            .issue(&NodeName::parse("hostile").expect("node name"))
            .expect("issue");
        let client = client_config(
            &identity,
            &DenyList::empty(),
            &TransportSettings::default(),
        )
        .expect("client config");
        let mut endpoint =
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("endpoint");
        endpoint.set_default_client_config(client);
        let conn = endpoint
            .connect(SocketAddr::from(([127, 0, 0, 1], port)), ANY_NODE_SAN)
            .expect("connect")
            .await
            .expect("the hostile peer is a mesh member: its handshake succeeds");

        // 1. Malformed, unknown-version and oversized headers: refused at once, each alone.
        let t0 = Instant::now();
        let mut malformed = Vec::new();
        for (what, bytes, detail) in [
            ("bad magic", b"XX\x01\x00\x04echo".to_vec(), "bad magic"),
            ("unknown version", b"AM\x09\x00\x04echo".to_vec(), "version 9"),
            ("oversized name", [b"AM\x01\x00\xc8".to_vec(), vec![b'a'; 200]].concat(), "too long"),
            ("invalid name", b"AM\x01\x00\x04e ho".to_vec(), "invalid service name"),
        ] {
            let (_send, reply) = send_raw(&conn, &bytes).await;
            let got = reply.await.expect("join");
            malformed.push((what, got, detail));
        }
        let malformed_took = t0.elapsed();
        assert!(
            malformed_took < Duration::from_secs(5),
            "malformed headers waited for the header timeout ({malformed_took:?}) instead of being refused at once"
        );

        // 2. Streams that start a header and never finish it (the magic only): more than the
        //    provider lets wait on one connection.
        let mut silent = Vec::with_capacity(SILENT);
        for _ in 0..SILENT {
            silent.push(send_raw(&conn, b"AM").await);
        }
        // The tunnel serves a real consumer while they hang.
        let mut rss_peak = rss_kib(provider_pid);
        for _ in 0..20 {
            tokio::task::spawn_blocking(move || echo_once(addr))
                .await
                .expect("join")
                .expect("the tunnel stopped working while silent streams hang");
            rss_peak = rss_peak.max(rss_kib(provider_pid));
        }

        // 3. Each silent stream gets a typed refusal: after the header bound for those the
        //    provider let wait, at once for the rest.
        let (mut timed_out, mut capped) = (0, 0);
        for (send, reply) in silent {
            let got = reply.await.expect("join");
            match &got {
                Ok(Reply::Refused(r))
                    if r.code == RefusalCode::BadRequest && r.detail.contains("no header within") =>
                {
                    timed_out += 1
                }
                Ok(Reply::Refused(r))
                    if r.code == RefusalCode::BadRequest
                        && r.detail.contains("already wait for their header") =>
                {
                    capped += 1
                }
                _ => panic!("a silent stream got {got:?}, not a bad-request refusal"),
            }
            drop(send);
        }
        assert_eq!(
            (timed_out, capped),
            (AWAITING_CAP, SILENT - AWAITING_CAP),
            "of {SILENT} silent streams, {timed_out} waited for the header bound and {capped} were refused at once; \
             expected the provider to let {AWAITING_CAP} wait"
        );
        rss_peak = rss_peak.max(rss_kib(provider_pid));
        // The hostile peer's connection itself is still served: one bad stream does not
        // condemn the connection (a well-formed request on it still works).
        let (_send, reply) = send_raw(&conn, b"AM\x01\x00\x04echo").await;
        match reply.await.expect("join") {
            Ok(Reply::Ok) => {}
            other => panic!("a well-formed stream after the hostile ones got {other:?}"),
        }
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        (rss_peak, malformed)
    });
    for (what, got, detail) in malformed {
        expect_bad_request(what, got, detail);
    }
    echo_once(addr).expect("the tunnel works after the hostile peer");
    for needle in [
        "no header within",
        "bad magic",
        "unsupported protocol version 9",
        "too long",
        "invalid service name",
    ] {
        provider.expect_log(&["refused stream", needle], Duration::from_secs(5));
    }
    eprintln!(
        "FIGURE provider RSS {rss_before} KiB before, {rss_peak} KiB peak with {SILENT} silent streams ({} bytes per stream)",
        (rss_peak.saturating_sub(rss_before) * 1024) / SILENT as u64
    );
    // Bounded: a hanging stream costs a few KiB, not a buffer per stream.
    assert!(
        rss_peak < rss_before + 64 * 1024,
        "the provider grew from {rss_before} KiB to {rss_peak} KiB for {SILENT} silent streams"
    );
}
