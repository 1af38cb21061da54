//! CI smoke run of the benchmark (issue 4, point 4): `benches/mesh.sh --quick --no-write` must
//! run to its end (about 30-45 s on 2 cores) and print a `summary: PATH ok` line for every path.
//! It asserts no speed: the benchmark's figures are for people, not a regression gate.
//!
//! When the benchmark's tools (iperf3, socat, stunnel4, redis, openssl, a C compiler) are missing
//! and cannot be installed (not root), the script exits 77 and this test prints SKIPPED.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PATHS: [&str; 4] = ["direct", "socat", "stunnel", "ambassador"];
/// Hard bound on the whole run; the script's quick mode normally needs well under a minute.
const LIMIT: Duration = Duration::from_secs(150);

#[test]
fn bench_script_quick_run() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/mesh.sh");
    let start = Instant::now();
    let mut child = Command::new("bash")
        .arg(&script)
        .args(["--quick", "--no-write"])
        .env("AMBASSADOR_BIN", env!("CARGO_BIN_EXE_ambassador"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run benches/mesh.sh with bash");
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));

    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for mesh.sh") {
            break Some(st);
        }
        if start.elapsed() > LIMIT {
            // SIGTERM first: the script's trap then stops every process it started.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(15) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let took = start.elapsed();

    let Some(status) = status else {
        panic!(
            "benches/mesh.sh --quick did not finish within {LIMIT:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
    };
    if status.code() == Some(77) {
        eprintln!("SKIPPED: {}", stdout.trim());
        return;
    }
    assert!(
        status.success(),
        "benches/mesh.sh --quick failed ({status}) after {took:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    for p in PATHS {
        let line = format!("summary: {p} ok");
        assert!(
            stdout.lines().any(|l| l.trim() == line),
            "no `{line}` line in the output of benches/mesh.sh --quick\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
    }
    eprintln!("benches/mesh.sh --quick ran in {took:?}");
}
