//! The `ambassador` binary: parse, set up logging, install the crypto provider, validate the
//! configuration, run the library, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use ambassador::cli::{Cli, Command, LogFormat, MeshCommand};
use ambassador::config::{FileConfig, NodeConfig, mesh_key};
use ambassador::error::Failure;
use ambassador::identity::{MeshKey, MeshRoot};

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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let common = &cli.common;
    match &cli.command {
        Command::Announce(args) => {
            let cfg = NodeConfig::from_announce(common, args)?;
            ambassador::node::run(cfg, shutdown_signal()).await
        }
        Command::Connect(args) => {
            let cfg = NodeConfig::from_connect(common, args)?;
            ambassador::node::run(cfg, shutdown_signal()).await
        }
        Command::Run(args) => {
            let file = FileConfig::load(&args.config)?;
            let cfg = NodeConfig::from_file(common, &file)?;
            ambassador::node::run(cfg, shutdown_signal()).await
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
    let runtime = match tokio::runtime::Runtime::new() {
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
