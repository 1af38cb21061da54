//! Configuration files, black-box: every fixture under `tests/config/valid/` passes
//! `ambassador run -c FILE --check`, every one under `tests/config/invalid/` fails with exit
//! code 2 and exactly the line of its `.err` sibling, and checking writes nothing, not even
//! the default mesh key. `run -c` on an invalid file writes nothing either; on a valid one the
//! default key is made as the node starts. `examples/ambassador.toml` passes too and shows
//! every key of the file's schema. `ls` weighs the mesh key flags as nodes do.

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

/// `examples/ambassador.toml`.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ambassador.toml")
}

#[test]
fn the_example_passes_check() {
    assert_valid(&example());
}

/// The `pub NAME:` fields of `pub struct NAME {` in `source`, in order.
fn struct_fields(source: &str, name: &str) -> Vec<String> {
    let open = format!("pub struct {name} {{");
    let start = source
        .find(&open)
        .unwrap_or_else(|| panic!("no `{open}` in src/config.rs"));
    let body = &source[start + open.len()..];
    let body = &body[..body.find("\n}").expect("the struct's closing brace")];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub ")?.split_once(':'))
        .map(|(field, _)| field.trim().trim_start_matches("r#").to_string())
        .collect()
}

/// The keys `text` sets or shows commented out: `key = ...` lines and the `key` of `[key]`
/// and `[key.NAME]` table headers.
fn example_keys(text: &str) -> std::collections::BTreeSet<String> {
    let is_key =
        |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    text.lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter_map(|l| match l.strip_prefix('[') {
            Some(header) => header.split(['.', ']']).next(),
            None => l.split_once('=').map(|(k, _)| k.trim()),
        })
        .filter(|k| is_key(k))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_example_shows_every_key_of_the_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/config.rs")).expect("read src/config.rs");
    let text = std::fs::read_to_string(example()).expect("read the example");
    let keys = example_keys(&text);
    let mut missing = Vec::new();
    for table in ["FileConfig", "FileAnnounce", "FileConnect"] {
        let fields = struct_fields(&source, table);
        assert!(!fields.is_empty(), "no fields found in {table}");
        missing.extend(
            fields
                .into_iter()
                .filter(|f| !keys.contains(f))
                .map(|f| format!("`{f} = ...` ({table}::{f})")),
        );
    }
    assert!(
        missing.is_empty(),
        "examples/ambassador.toml shows no line (commented or not) for {}",
        missing.join(", ")
    );
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
