//! Configuration files, black-box: every fixture under `tests/config/valid/` passes
//! `ambassador run -c FILE --check`, every one under `tests/config/invalid/` fails with exit
//! code 2 and exactly the line of its `.err` sibling, and checking writes nothing, not even
//! the default mesh key. `run -c` on an invalid file writes nothing either; on a valid one the
//! default key is made as the node starts. `ls` weighs the mesh key flags as nodes do.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Output, Proc, command, run, unique};

const LIMIT: Duration = Duration::from_secs(10);

/// The fixture directory `tests/config/<kind>`.
fn fixture_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config")
        .join(kind)
}

/// The `.toml` files of `tests/config/<kind>`, sorted.
fn fixtures(kind: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir(kind))
        .expect("read the fixture directory")
        .map(|e| e.expect("read a fixture entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Runs `ambassador run -c FILE [extra]` from the file's directory (so messages name it
/// relatively, as the `.err` files do) with a fresh, empty HOME/XDG_CONFIG_HOME; returns
/// the output and what the run left in that directory.
fn run_file(file: &Path, extra: &[&str]) -> (Output, Vec<PathBuf>) {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = command(home.path());
    let name = file.file_name().expect("a file name");
    cmd.current_dir(file.parent().expect("a directory"))
        .args(["--interface", "lo", "run", "-c"])
        .arg(name)
        .args(extra);
    let out = run(cmd, LIMIT);
    let left = std::fs::read_dir(home.path())
        .expect("read the home directory")
        .map(|e| e.expect("read a home entry").path())
        .collect();
    (out, left)
}

/// A valid file: exit 0, one line on stdout, nothing on stderr, nothing written.
fn assert_valid(file: &Path) {
    let (out, left) = run_file(file, &["--check"]);
    let what = file.display();
    assert_eq!(out.code(), 0, "{what}: {out:?}");
    assert_eq!(out.stderr, "", "{what}: stderr");
    assert!(out.stdout.ends_with(": valid\n"), "{what}: {out:?}");
    assert!(left.is_empty(), "{what}: --check wrote {left:?}");
}

#[test]
fn valid_fixtures_pass_check_and_write_nothing() {
    let files = fixtures("valid");
    assert!(files.len() >= 5, "too few valid fixtures: {files:?}");
    for file in &files {
        assert_valid(file);
    }
}

#[test]
fn the_example_passes_check() {
    assert_valid(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ambassador.toml"));
}

#[test]
fn invalid_fixtures_fail_with_their_line_and_write_nothing() {
    let files = fixtures("invalid");
    assert!(files.len() >= 20, "too few invalid fixtures: {files:?}");
    for file in &files {
        let what = file.display();
        let err_file = file.with_extension("err");
        let expected = std::fs::read_to_string(&err_file)
            .unwrap_or_else(|e| panic!("{what}: no error line in {}: {e}", err_file.display()));
        assert_eq!(
            expected.lines().count(),
            1,
            "{}: one line",
            err_file.display()
        );
        // The same refusal whether asked to check or to run, and nothing written either way.
        for extra in [&["--check"][..], &[]] {
            let (out, left) = run_file(file, extra);
            assert_eq!(out.code(), 2, "{what} {extra:?}: {out:?}");
            assert_eq!(out.stdout, "", "{what} {extra:?}: stdout");
            assert_eq!(out.stderr, expected, "{what} {extra:?}: stderr");
            assert!(left.is_empty(), "{what} {extra:?}: wrote {left:?}");
        }
    }
}

#[test]
fn every_fixture_is_paired() {
    // An `.err` without its `.toml` (a renamed fixture) would silently test nothing.
    for entry in std::fs::read_dir(fixture_dir("invalid")).expect("read the fixtures") {
        let path = entry.expect("read a fixture entry").path();
        assert!(
            path.with_extension("toml").is_file() && path.with_extension("err").is_file(),
            "{}: every invalid fixture is a .toml with its .err",
            path.display()
        );
    }
}

#[test]
fn the_default_key_is_made_when_the_node_starts_not_when_checked() {
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("run.toml");
    std::fs::write(&file, format!("[connect.{}]\n", unique("cfg"))).expect("write the file");
    let key = home.path().join("ambassador/mesh.key");
    let node = |extra: &[&str]| {
        let mut cmd = command(home.path());
        cmd.args(["--interface", "lo", "--node", &unique("cfg"), "run", "-c"])
            .arg(&file)
            .args(extra);
        cmd
    };
    let out = run(node(&["--check"]), LIMIT);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(!key.exists(), "--check made {}", key.display());
    let mut proc = Proc::spawn("run", node(&[]));
    proc.expect_log(&["created a new mesh key"], LIMIT);
    assert!(key.is_file(), "no {} after start", key.display());
    proc.signal("TERM");
    assert!(proc.wait_exit(LIMIT).is_some(), "did not stop on SIGTERM");
}

#[test]
fn ls_refuses_two_mesh_keys_as_nodes_do() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = command(home.path());
    cmd.args(["--interface", "lo", "ls", "--timeout", "100ms"])
        .args(["--mesh-key", "not-read", "--mesh-key-file", "not-read.key"]);
    let out = run(cmd, LIMIT);
    assert_eq!(out.code(), 2, "{out:?}");
    assert_eq!(
        out.stderr,
        "ambassador: give either --mesh-key or --mesh-key-file, not both\n"
    );
}
