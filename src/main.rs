//! The `ambassador` binary: parse, set up logging, install the crypto provider, validate the
//! configuration, run the library, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use ambassador::cli::{CaCommand, Cli, Command, LogFormat, MeshCommand};
use ambassador::config::{FileConfig, NodeConfig, mesh_key};
use ambassador::error::Failure;
use ambassador::identity::{MeshKey, MeshRoot, ca};
use ambassador::names::{NodeName, ServiceName};
use ambassador::node::Control;

fn init_logging(format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,ambassador={level}")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a node: SIGINT/SIGTERM stop it (drain first; again: at once), SIGHUP reloads.
async fn run_node(cfg: NodeConfig) -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for (kind, control) in [
        (SignalKind::interrupt(), Control::Stop),
        (SignalKind::terminate(), Control::Stop),
        (SignalKind::hangup(), Control::Reload),
    ] {
        let mut sig = signal(kind)
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot handle signals: {e}")))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while sig.recv().await.is_some() {
                if tx.send(control).await.is_err() {
                    break;
                }
            }
        });
    }
    ambassador::node::run(cfg, rx).await
}

fn parse_date(text: &str) -> Result<time::OffsetDateTime, Failure> {
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

async fn run(cli: Cli) -> Result<(), Failure> {
    let common = &cli.common;
    match &cli.command {
        Command::Announce(args) => {
            let cfg = NodeConfig::from_announce(common, args)?;
            run_node(cfg).await
        }
        Command::Connect(args) => {
            let cfg = NodeConfig::from_connect(common, args)?;
            run_node(cfg).await
        }
        Command::Run(args) => {
            let file = FileConfig::load(&args.config)?;
            let mut cfg = NodeConfig::from_file(common, &file)?;
            cfg.config_file = Some(args.config.clone());
            run_node(cfg).await
        }
        Command::Ls(args) => ambassador::ls::run(common, args).await,
        Command::Status(args) => ambassador::control::print_status(args.json).await,
        Command::Mesh(MeshCommand::New { out }) => {
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
        Command::Ca(CaCommand::Init { out }) => {
            let mesh = ca::init(out).map_err(Failure::usage)?;
            eprintln!(
                "CA made in {} (mesh id {mesh}); keep ca.key offline, issue node bundles with `ambassador ca issue NODE --ca {} --out DIR`",
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::Ca(CaCommand::Issue {
            node,
            ca: ca_dir,
            services,
            days,
            start,
            out,
        }) => {
            let node = NodeName::parse(node).map_err(Failure::usage)?;
            let services = services
                .iter()
                .map(|s| ServiceName::parse(s.trim()).map_err(Failure::usage))
                .collect::<Result<Vec<_>, _>>()?;
            let start = start.as_deref().map(parse_date).transpose()?;
            let req = ca::IssueRequest {
                node,
                services,
                days: *days,
                start,
            };
            let fp = ca::issue(ca_dir, &req, out, common.insecure_key_permissions)
                .map_err(Failure::usage)?;
            eprintln!(
                "issued node.crt for node {} in {} (certificate fingerprint {fp})",
                req.node,
                out.display()
            );
            Ok(())
        }
        Command::Mesh(MeshCommand::Show) => {
            let (key, source) = mesh_key(common)?;
            let root = MeshRoot::derive(&key).map_err(|e| Failure::Runtime(e.into()))?;
            println!("{}", key.to_text());
            eprintln!("mesh id {} (key from {source})", root.mesh_id());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file_format = match &cli.command {
        Command::Run(args) => FileConfig::load(&args.config)
            .ok()
            .and_then(|f| f.log_format),
        _ => None,
    };
    init_logging(
        cli.common.log_format.or(file_format).unwrap_or_default(),
        cli.common.verbose,
    );
    // One crypto provider for the whole process (ring); an error means one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A current-thread runtime by default: a sidecar's work is a few QUIC connections, each
    // driven by one task, and one thread avoids cross-thread wake-ups on the data path
    // (measured against a one-worker multi-thread runtime: 1.7x the requests/s at 50 clients,
    // half the CPU per request, lower 1-client latency; benches/results.md).
    // AMBASSADOR_WORKER_THREADS=N runs N worker threads instead.
    let workers = std::env::var("AMBASSADOR_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| n.clamp(1, 64));
    let mut builder = match workers {
        // The default: every task on the main thread (no hand-off between threads at all).
        None => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all();
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ambassador: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("ambassador: {f}");
            ExitCode::from(f.exit_code() as u8)
        }
    }
}
