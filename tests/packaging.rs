//! Packaging, black-box: `ambassador completions SHELL` and `ambassador man` come from the
//! clap definitions; `examples/ambassador.service` is a hardened systemd unit that
//! `systemd-analyze verify` accepts (where it is installed).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Output, command, run};

const LIMIT: Duration = Duration::from_secs(10);

/// Runs `ambassador ARGS...` with an empty home, to its exit.
fn ambassador(args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = command(home.path());
    cmd.args(args);
    run(cmd, LIMIT)
}

/// `examples/ambassador.service`.
fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ambassador.service");
    std::fs::read_to_string(&path).expect("read examples/ambassador.service")
}

#[test]
fn bash_completions_name_the_subcommands() {
    let out = ambassador(&["completions", "bash"]);
    assert_eq!(out.code(), 0, "{out:?}");
    for word in [
        "announce",
        "connect",
        "run",
        "--dns-server",
        "completions",
        "man",
    ] {
        assert!(out.stdout.contains(word), "bash completions lack {word:?}");
    }
}

#[test]
fn zsh_and_fish_completions_are_produced() {
    for (shell, mark) in [
        ("zsh", "#compdef ambassador"),
        ("fish", "complete -c ambassador"),
    ] {
        let out = ambassador(&["completions", shell]);
        assert_eq!(out.code(), 0, "{shell}: {out:?}");
        assert!(out.stdout.contains(mark), "{shell}: no {mark:?}");
        assert!(out.stdout.contains("announce"), "{shell}: no announce");
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = ambassador(&["completions", "tcsh"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert_eq!(out.stdout, "");
}

#[test]
fn the_man_page_is_roff_naming_the_subcommands() {
    let out = ambassador(&["man"]);
    assert_eq!(out.code(), 0, "{out:?}");
    // clap_mangen opens with a string definition, then the title.
    let head: Vec<&str> = out.stdout.lines().take(5).collect();
    assert!(
        head.iter().any(|l| l.starts_with(".TH ambassador 1")),
        "no .TH title in {head:#?}"
    );
    assert!(out.stdout.contains(".SH SUBCOMMANDS"));
    for sub in [
        "announce",
        "connect",
        "run",
        "ls",
        "status",
        "mesh",
        "ca",
        "completions",
    ] {
        assert!(
            out.stdout.contains(&format!("ambassador\\-{sub}(1)")),
            "the page does not name {sub}"
        );
    }
}

#[test]
fn man_out_writes_a_page_per_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = ambassador(&["man", "--out", dir.path().to_str().expect("utf-8 path")]);
    assert_eq!(out.code(), 0, "{out:?}");
    for page in [
        "ambassador.1",
        "ambassador-connect.1",
        "ambassador-ca-issue.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH "), "{page} is not a page");
    }
    let missing = dir.path().join("nope");
    let out = ambassador(&["man", "--out", missing.to_str().expect("utf-8 path")]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

#[test]
fn the_unit_is_hardened_and_reloads_after_a_check() {
    let unit = unit_text();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "ExecStart=/usr/local/bin/ambassador run -c /etc/ambassador/ambassador.toml",
        "ExecReload=/usr/local/bin/ambassador run -c /etc/ambassador/ambassador.toml --check",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "StateDirectory=ambassador",
        "ConfigurationDirectory=ambassador",
        "Environment=XDG_CONFIG_HOME=%S",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    ] {
        assert!(lines.contains(&want), "the unit lacks {want:?}");
    }
    // The check runs before the signal: a bad file never reaches the node.
    let check = lines.iter().position(|l| l.ends_with("--check"));
    let hup = lines
        .iter()
        .position(|l| l.starts_with("ExecReload=/bin/kill"));
    assert!(check < hup, "ExecReload order");
    // The stop timeout outlasts the default drain (30s).
    let stop = lines
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec");
    let stop = humantime_secs(stop);
    assert!(
        stop > 30,
        "TimeoutStopSec={stop}s is not above the 30s drain"
    );
}

/// `45s` or `45` as seconds.
fn humantime_secs(text: &str) -> u64 {
    text.trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds")
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let found = Command::new("systemd-analyze").arg("--version").output();
    if !found.is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: systemd-analyze not installed");
        return;
    }
    // verify needs ExecStart's binary to exist: point the unit at the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_text().replace(
        "/usr/local/bin/ambassador",
        env!("CARGO_BIN_EXE_ambassador"),
    );
    let path = dir.path().join("ambassador.service");
    std::fs::write(&path, unit).expect("write the unit");
    // --man=no: the page is not installed here.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    // A misspelt or unparsable directive is only a warning (exit 0): refuse those too.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ambassador.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze warns: {about_unit:#?}"
    );
}
