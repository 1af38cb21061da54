//! The command line: bad input gets one clear line and exit code 2 (never the secret), the
//! mesh key commands, and `--help` everywhere.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Mesh, Output, command, run};

const LIMIT: Duration = Duration::from_secs(10);

/// A node command that must fail at once: `--interface lo` so nothing reaches real networks.
fn node_cmd(home: &Path, sub: &str, args: &[&str]) -> Command {
    let mut cmd = command(home);
    cmd.arg(sub)
        .args(["--interface", "lo", "--node", &common::unique("cli")])
        .args(args);
    cmd
}

/// Runs `SUB --mesh-key-file KEY_FILE ARGS...` (see [`node_cmd`]) in `home` to its exit.
fn run_with_key_file(home: &Path, sub: &str, key_file: &str, args: &[&str]) -> Output {
    let mut all = vec!["--mesh-key-file", key_file];
    all.extend_from_slice(args);
    run(node_cmd(home, sub, &all), LIMIT)
}

/// Exit code 2 within a few seconds, nothing on stdout, exactly one line on stderr that starts
/// with `ambassador: ` and contains every one of `mentions`; `secret` appears nowhere.
fn assert_usage_error(what: &str, out: &Output, mentions: &[&str], secret: Option<&str>) {
    assert_eq!(out.code(), 2, "{what}: exit code; {out:?}");
    assert!(
        out.elapsed < Duration::from_secs(5),
        "{what}: took {:?}",
        out.elapsed
    );
    assert_eq!(out.stdout, "", "{what}: stdout");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one line on stderr, got {lines:#?}"
    );
    let line = lines[0];
    assert!(line.starts_with("ambassador: "), "{what}: {line:?}");
    for m in mentions {
        assert!(line.contains(m), "{what}: {line:?} does not mention {m:?}");
    }
    if let Some(secret) = secret {
        assert!(
            !out.stderr.contains(secret) && !out.stdout.contains(secret),
            "{what}: the secret leaked: {out:?}"
        );
    }
}

#[test]
fn malformed_specs_are_usage_errors() {
    let mesh = Mesh::new();
    let key = mesh.key_text();
    let kf = mesh.key_file.to_str().unwrap();
    let home = mesh.dir.path();
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("announce", &["redis"], &["\"redis\"", "SPEC"]),
        ("announce", &["redis:99999"], &["99999", "SPEC"]),
        ("announce", &["redis:0"], &["redis:0"]),
        ("announce", &["redis:6379=nowhere"], &["nowhere"]),
        ("connect", &["re dis"], &["re dis", "SPEC"]),
        ("connect", &["redis:70000"], &["70000"]),
    ];
    for (sub, specs, mentions) in cases {
        let mut args = vec!["--mesh-key-file", kf];
        args.extend_from_slice(specs);
        let out = run(node_cmd(home, sub, &args), LIMIT);
        assert_usage_error(&format!("{sub} {specs:?}"), &out, mentions, Some(&key));
    }
}

#[test]
fn malformed_addresses_are_one_line_with_a_correct_example() {
    let mesh = Mesh::new();
    let kf = mesh.key_file.to_str().unwrap();
    let home = mesh.dir.path();
    let srv = [
        "redis:16379",
        "--discover",
        "dns-srv:_redis._tcp.example.lan",
    ];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--dns-server", "10.0.0.53:x"],
            "ambassador: bad --dns-server \"10.0.0.53:x\": expected IP or IP:PORT, e.g. 10.0.0.53 or 10.0.0.53:5353",
        ),
        (
            &["--dns-server", "dns.lan"],
            "ambassador: bad --dns-server \"dns.lan\": expected IP or IP:PORT, e.g. 10.0.0.53 or 10.0.0.53:5353",
        ),
        (
            &["--bind", "everywhere"],
            "ambassador: bad --bind \"everywhere\": expected IP or IP:PORT, e.g. 0.0.0.0 (an ephemeral port) or 0.0.0.0:7443",
        ),
    ];
    for (extra, line) in cases {
        let mut args = vec!["--mesh-key-file", kf];
        args.extend_from_slice(&srv);
        args.extend_from_slice(extra);
        let out = run(node_cmd(home, "connect", &args), LIMIT);
        assert_usage_error(&format!("{extra:?}"), &out, &[], None);
        assert_eq!(out.stderr.trim_end(), *line, "{extra:?}");
    }
    // A backend has no default port: a bare IP is refused, with an example.
    let args = [
        "--mesh-key-file",
        kf,
        "redis:16379",
        "--backend",
        "10.0.0.7",
    ];
    let out = run(node_cmd(home, "connect", &args), LIMIT);
    assert_usage_error("--backend IP", &out, &[], None);
    assert_eq!(
        out.stderr.trim_end(),
        "ambassador: bad backend \"10.0.0.7\": expected HOST:PORT, e.g. 10.0.0.7:7443 or node-b.lan:7443"
    );
}

/// What the argument parser refuses (a value outside a fixed set, an unknown option or
/// subcommand, a missing value) is one line and exit 2 too, naming the bad input and the
/// choices, with no usage block after it.
#[test]
fn refused_arguments_are_one_line() {
    let home = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--log-format", "yaml", "ls"],
            &["'yaml'", "--log-format", "text, json", "--help"],
        ),
        (
            &["connect", "--congestion", "reno", "redis"],
            &["'reno'", "--congestion", "auto, cubic, loss-tolerant"],
        ),
        (&["frob"], &["'frob'", "subcommand"]),
        (&["ls", "--no-such-option"], &["--no-such-option"]),
        (&["connect", "redis", "--peer-timeout"], &["--peer-timeout"]),
    ];
    for (args, mentions) in cases {
        let mut cmd = command(home.path());
        cmd.args(*args);
        let out = run(cmd, LIMIT);
        assert_usage_error(&format!("{args:?}"), &out, mentions, None);
    }
    // `--help` is still the help, on stdout, exit 0.
    let mut cmd = command(home.path());
    cmd.args(["connect", "--help"]);
    let out = run(cmd, LIMIT);
    assert_eq!(out.code(), 0, "connect --help: {out:?}");
    assert!(out.stdout.contains("Usage:"), "connect --help: {out:?}");
}

#[test]
fn a_bare_bind_ip_passes_check() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("run.toml");
    std::fs::write(&file, "[connect.redis]\n").unwrap();
    let mut cmd = command(home.path());
    cmd.args(["--interface", "lo", "--bind", "127.0.0.1", "run", "-c"])
        .arg(&file)
        .arg("--check");
    let out = run(cmd, LIMIT);
    assert_eq!(out.code(), 0, "{out:?}");
}

#[test]
fn missing_or_unreadable_key_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.key");
    let out = run(
        node_cmd(
            dir.path(),
            "announce",
            &["--mesh-key-file", missing.to_str().unwrap(), "redis:6379"],
        ),
        LIMIT,
    );
    assert_usage_error("missing key file", &out, &[missing.to_str().unwrap()], None);

    // A directory cannot be read as a file, whoever we are (root reads a 0000 file).
    let not_a_file = dir.path().join("keydir");
    std::fs::create_dir(&not_a_file).unwrap();
    std::fs::set_permissions(&not_a_file, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = run(
        node_cmd(
            dir.path(),
            "connect",
            &[
                "--mesh-key-file",
                not_a_file.to_str().unwrap(),
                "redis:6379",
            ],
        ),
        LIMIT,
    );
    assert_usage_error(
        "key file is a directory",
        &out,
        &[not_a_file.to_str().unwrap()],
        None,
    );

    // A file without read permission (only meaningful when not root).
    let mesh = Mesh::new();
    std::fs::set_permissions(&mesh.key_file, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&mesh.key_file).is_err() {
        let kf = mesh.key_file.to_str().unwrap();
        let out = run_with_key_file(dir.path(), "announce", kf, &["redis:6379"]);
        assert_usage_error("key file mode 0000", &out, &[kf], None);
    }
}

#[test]
fn key_file_readable_by_others_is_refused_with_the_mend() {
    let mesh = Mesh::new();
    let key = mesh.key_text();
    std::fs::set_permissions(&mesh.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let kf = mesh.key_file.to_str().unwrap();
    for sub in ["announce", "connect"] {
        let out = run_with_key_file(mesh.dir.path(), sub, kf, &["redis:6379"]);
        assert_usage_error(
            &format!("{sub} with a 0644 key"),
            &out,
            &["chmod 600", kf],
            Some(&key),
        );
    }
    let mut cmd = command(mesh.dir.path());
    cmd.args(["mesh", "show", "--mesh-key-file", kf]);
    assert_usage_error(
        "mesh show with a 0644 key",
        &run(cmd, LIMIT),
        &["chmod 600"],
        Some(&key),
    );
}

#[test]
fn malformed_key_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    // Almost a key: one hex digit short, so it looks like a secret that must not be echoed.
    let almost = format!("ambk1-{}", "5e".repeat(31) + "7");
    let path = dir.path().join("bad.key");
    std::fs::write(&path, format!("{almost}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let kf = path.to_str().unwrap();
    let out = run_with_key_file(dir.path(), "announce", kf, &["redis:6379"]);
    assert_usage_error("malformed key file", &out, &["mesh key"], Some(&almost));

    // The same through the environment and through argv.
    let mut cmd = node_cmd(dir.path(), "connect", &["redis:6379"]);
    cmd.env("AMBASSADOR_MESH_KEY", &almost);
    assert_usage_error(
        "malformed AMBASSADOR_MESH_KEY",
        &run(cmd, LIMIT),
        &["mesh key"],
        Some(&almost),
    );
    let out = run(
        node_cmd(
            dir.path(),
            "announce",
            &["--mesh-key", &almost, "redis:6379"],
        ),
        LIMIT,
    );
    assert_usage_error("malformed --mesh-key", &out, &["mesh key"], Some(&almost));
}

#[test]
fn listen_port_in_use_is_a_usage_error() {
    let mesh = Mesh::new();
    let key = mesh.key_text();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let kf = mesh.key_file.to_str().unwrap();
    let spec = format!("redis:{port}");
    let out = run_with_key_file(mesh.dir.path(), "connect", kf, &[&spec]);
    assert_usage_error(
        "listen port in use",
        &out,
        &[&format!("127.0.0.1:{port}"), "in use"],
        Some(&key),
    );
    drop(held);
}

#[test]
fn quic_bind_address_in_use_is_a_usage_error() {
    let held = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let mesh = Mesh::new();
    let key = mesh.key_text();
    let kf = mesh.key_file.to_str().unwrap();
    let args = ["--bind", &addr, "redis:6379"];
    let out = run_with_key_file(mesh.dir.path(), "announce", kf, &args);
    assert_usage_error("--bind in use", &out, &[&addr], Some(&key));
    drop(held);
}

fn is_key(s: &str) -> bool {
    s.strip_prefix("ambk1-")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Runs `cmd`, which must exit 0; its stdout, trimmed.
fn stdout_of(cmd: Command) -> String {
    let out = run(cmd, LIMIT);
    assert_eq!(out.code(), 0, "{out:?}");
    out.stdout.trim().to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn mesh_new_prints_a_fresh_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    for _ in 0..2 {
        let mut cmd = command(dir.path());
        cmd.args(["mesh", "new"]);
        let out = run(cmd, LIMIT);
        assert_eq!(out.code(), 0, "{out:?}");
        let key = out.stdout.trim().to_string();
        assert!(is_key(&key), "not a key: {:?}", out.stdout);
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1], "two `mesh new` gave the same key");
}

#[test]
fn mesh_new_out_writes_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("sub").join("team.key");
    let mut cmd = command(dir.path());
    cmd.args(["mesh", "new", "--out"]).arg(&f);
    let out = run(cmd, LIMIT);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(mode(&f), 0o600, "mode of {}", f.display());
    let key = std::fs::read_to_string(&f).unwrap().trim().to_string();
    assert!(is_key(&key), "file holds {key:?}");
    assert!(
        !out.stdout.contains(&key) && !out.stderr.contains(&key),
        "key printed: {out:?}"
    );

    // An existing file is never overwritten.
    let mut cmd = command(dir.path());
    cmd.args(["mesh", "new", "--out"]).arg(&f);
    let out = run(cmd, LIMIT);
    assert_usage_error(
        "mesh new --out EXISTING",
        &out,
        &[f.to_str().unwrap()],
        Some(&key),
    );
    assert_eq!(
        std::fs::read_to_string(&f).unwrap().trim(),
        key,
        "existing key file was changed"
    );

    // `mesh show` with that file prints that key.
    let mut cmd = command(dir.path());
    cmd.args(["mesh", "show", "--mesh-key-file"]).arg(&f);
    assert_eq!(stdout_of(cmd), key);
}

#[test]
fn mesh_show_creates_the_default_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let default = dir.path().join("ambassador").join("mesh.key");
    assert!(!default.exists());
    let show = || {
        let mut cmd = command(dir.path());
        cmd.args(["mesh", "show"]);
        stdout_of(cmd)
    };
    let first = show();
    assert!(is_key(&first), "mesh show printed {first:?}");
    assert!(default.is_file(), "{} not created", default.display());
    assert_eq!(mode(&default), 0o600, "mode of the default key file");
    assert_eq!(
        std::fs::read_to_string(&default).unwrap().trim(),
        first,
        "printed key is not the file's"
    );
    assert_eq!(show(), first, "second `mesh show` printed another key");

    // The environment variable takes precedence and is printed as given.
    let mut cmd = command(dir.path());
    let other = Mesh::new().key_text();
    cmd.args(["mesh", "show"])
        .env("AMBASSADOR_MESH_KEY", &other);
    assert_eq!(stdout_of(cmd), other);
}

#[test]
fn help_of_every_subcommand_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let subs: &[&[&str]] = &[
        &[],
        &["announce"],
        &["connect"],
        &["run"],
        &["ls"],
        &["mesh"],
        &["mesh", "new"],
        &["mesh", "show"],
    ];
    for sub in subs {
        for flag in ["--help", "-h"] {
            let mut cmd = command(dir.path());
            cmd.args(*sub).arg(flag);
            let out = run(cmd, LIMIT);
            assert_eq!(out.code(), 0, "{sub:?} {flag}: {out:?}");
            assert!(
                out.stdout.contains("Usage"),
                "{sub:?} {flag}: {}",
                out.stdout
            );
        }
    }
    assert!(
        !dir.path().join("ambassador").exists(),
        "--help created a key"
    );
}
