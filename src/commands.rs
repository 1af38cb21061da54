//! The commands that run no node: `mesh new`, `mesh show`, `ca init` and `ca issue`, each
//! printing what it made (the secret only on stdout, when asked for) and saying where on
//! stderr; and the packaging ones, `completions SHELL` and `man`, generated from the clap
//! definitions.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, Common, IssueArgs};
use crate::config::mesh_key;
use crate::error::Failure;
use crate::identity::{MeshKey, MeshRoot, ca};
use crate::names::{NodeName, ServiceName};

/// `ambassador mesh new [--out FILE]`: a fresh mesh key, printed, or written to a new 0600
/// file.
pub fn mesh_new(out: Option<&Path>) -> Result<(), Failure> {
    let key = MeshKey::generate().map_err(Failure::usage)?;
    match out {
        Some(path) => {
            key.write_new_file(path).map_err(Failure::usage)?;
            eprintln!("wrote a new mesh key to {}", path.display());
        }
        None => println!("{}", key.to_text()),
    }
    Ok(())
}

/// `ambassador mesh show`: the mesh key in use (the default one is created on first use) and
/// its public mesh id.
pub fn mesh_show(common: &Common) -> Result<(), Failure> {
    let (key, source) = mesh_key(common)?;
    let root = MeshRoot::derive(&key).map_err(|e| Failure::Runtime(e.into()))?;
    println!("{}", key.to_text());
    eprintln!("mesh id {} (key from {source})", root.mesh_id());
    Ok(())
}

/// `ambassador ca init --out DIR`: a new CA in a new directory.
pub fn ca_init(out: &Path) -> Result<(), Failure> {
    let mesh = ca::init(out).map_err(Failure::usage)?;
    eprintln!(
        "CA made in {} (mesh id {mesh}); keep ca.key offline, issue node bundles with `ambassador ca issue NODE --ca {} --out DIR`",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `ambassador ca issue NODE --ca DIR --out DIR`: a node bundle. The arguments are checked
/// before the CA is read.
pub fn ca_issue(common: &Common, args: &IssueArgs) -> Result<(), Failure> {
    let node = NodeName::parse(&args.node).map_err(Failure::usage)?;
    let services = args
        .services
        .iter()
        .map(|s| ServiceName::parse(s.trim()).map_err(Failure::usage))
        .collect::<Result<Vec<_>, _>>()?;
    let start = args.start.as_deref().map(parse_date).transpose()?;
    let req = ca::IssueRequest {
        node,
        services,
        days: args.days,
        start,
    };
    let fp = ca::issue(&args.ca, &req, &args.out, common.insecure_key_permissions)
        .map_err(Failure::usage)?;
    eprintln!(
        "issued node.crt for node {} in {} (certificate fingerprint {fp})",
        req.node,
        args.out.display()
    );
    Ok(())
}

/// `ambassador completions SHELL`: the completion script, on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<(), Failure> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "ambassador", &mut script);
    write_stdout(&script)
}

/// `ambassador man [--out DIR]`: the manual page on stdout, or `ambassador.1` and one page
/// per subcommand (`ambassador-connect.1`, ...) written into `DIR`.
pub fn man(out: Option<&Path>) -> Result<(), Failure> {
    let cmd = Cli::command();
    match out {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot render the page: {e}")))?;
            write_stdout(&page)
        }
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Failure::usage(format!(
                    "--out {}: not a directory (create it first)",
                    dir.display()
                )));
            }
            clap_mangen::generate_to(cmd, dir).map_err(|e| {
                Failure::Runtime(anyhow::anyhow!(
                    "cannot write the pages into {}: {e}",
                    dir.display()
                ))
            })?;
            eprintln!(
                "wrote ambassador.1 and its subcommand pages to {}",
                dir.display()
            );
            Ok(())
        }
    }
}

/// Writes generated text to stdout; a closed pipe (`| head`) is not a failure.
/// Writes `value` as pretty JSON and a newline to stdout (`--json` of `ls` and `status`).
pub(crate) fn write_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Failure::Runtime(e.into()))?;
    text.push('\n');
    write_stdout(text.as_bytes())
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::Runtime(anyhow::anyhow!(
            "cannot write to stdout: {e}"
        ))),
    }
}

/// `--start YYYY-MM-DD`, as midnight UTC.
pub fn parse_date(text: &str) -> Result<time::OffsetDateTime, Failure> {
    let bad = || Failure::usage(format!("--start {text:?}: expected a date as YYYY-MM-DD"));
    let mut parts = text.splitn(3, '-').map(|p| p.parse::<i32>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d))) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let month = time::Month::try_from(u8::try_from(m).map_err(|_| bad())?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(y, month, u8::try_from(d).map_err(|_| bad())?)
        .map_err(|_| bad())?;
    Ok(date.midnight().assume_utc())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn issue_args(dir: &Path, start: Option<&str>) -> IssueArgs {
        IssueArgs {
            node: "node-a".into(),
            ca: dir.join("ca"),
            services: vec!["redis".into()],
            days: 30,
            start: start.map(str::to_string),
            out: dir.join("node-a"),
        }
    }

    #[test]
    fn mesh_new_writes_a_private_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.key");
        mesh_new(Some(&path)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(MeshKey::read_file(&path, false).is_ok());
        // Never over an existing key.
        let e = mesh_new(Some(&path)).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }

    #[test]
    fn mesh_show_shows_a_given_key() {
        let common = Common {
            mesh_key: Some(MeshKey::generate().unwrap().to_text()),
            ..Common::default()
        };
        mesh_show(&common).unwrap();
        let bad = Common {
            mesh_key: Some("nope".into()),
            ..Common::default()
        };
        assert_eq!(mesh_show(&bad).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn ca_init_then_issue() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(&dir.path().join("ca")).unwrap();
        let args = issue_args(dir.path(), None);
        ca_issue(&Common::default(), &args).unwrap();
        let id = ca::load(&args.out, false).unwrap();
        assert_eq!(id.node.as_str(), "node-a");
    }

    #[test]
    fn ca_issue_with_a_bad_start_is_a_usage_error_before_the_ca_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let e = ca_issue(
            &Common::default(),
            &issue_args(dir.path(), Some("2026-13-01")),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "--start \"2026-13-01\": expected a date as YYYY-MM-DD"
        );
    }

    #[test]
    fn dates() {
        let d = parse_date("2026-03-04").unwrap();
        assert_eq!((d.year(), d.month() as u8, d.day()), (2026, 3, 4));
        assert_eq!(d.hour(), 0);
        for bad in [
            "",
            "2026",
            "2026-03",
            "2026-02-30",
            "2026-00-01",
            "x-1-1",
            "2026-1-1-1",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }
}
