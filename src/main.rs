//! The `ambassador` binary: parse, set up logging, install the crypto provider, validate the
//! configuration, run the library, map the outcome to an exit code.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use ambassador::cli::{
    CaCommand, Cli, Command, Common, LogFormat, LsArgs, MeshCommand, StatusArgs,
};
use ambassador::commands;
use ambassador::config::{CheckedConfig, NodeConfig, load_file};
use ambassador::error::Failure;
use ambassador::node::Control;

/// jemalloc returns the pages a burst freed (see `transport::give_back_soon`); glibc's heap kept
/// them, fragmented.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        // One flat object per line: span fields (service, peer, connection id) as keys.
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(ambassador::logging::FlatJson)
            .init(),
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

/// What the command line asks for, its configuration checked (and nothing written yet).
enum Job<'a> {
    /// Run a node.
    Node(Box<CheckedConfig>),
    /// `run -c FILE --check`: the file is valid.
    Checked(&'a Path),
    /// `ls`.
    Ls(&'a LsArgs),
    /// `status`.
    Status(&'a StatusArgs),
    /// `mesh new`, `mesh show`.
    Mesh(&'a MeshCommand),
    /// `ca init`, `ca issue`.
    Ca(&'a CaCommand),
    /// `completions SHELL`.
    Completions(clap_complete::Shell),
    /// `man [--out DIR]`.
    Man(Option<&'a Path>),
}

/// Checks the configuration a command asks for; writes nothing.
fn job(cli: &Cli) -> Result<Job<'_>, Failure> {
    let common = &cli.common;
    let job = match &cli.command {
        Command::Announce(args) => Job::Node(Box::new(CheckedConfig::from_announce(common, args)?)),
        Command::Connect(args) => Job::Node(Box::new(CheckedConfig::from_connect(common, args)?)),
        Command::Run(args) => {
            let cfg = load_file(common, &args.config)?;
            if args.check {
                Job::Checked(&args.config)
            } else {
                Job::Node(Box::new(cfg))
            }
        }
        Command::Ls(args) => Job::Ls(args),
        Command::Status(args) => Job::Status(args),
        Command::Mesh(cmd) => Job::Mesh(cmd),
        Command::Ca(cmd) => Job::Ca(cmd),
        Command::Completions { shell } => Job::Completions(*shell),
        Command::Man { out } => Job::Man(out.as_deref()),
    };
    Ok(job)
}

async fn run(common: &Common, job: Job<'_>) -> Result<(), Failure> {
    match job {
        Job::Node(cfg) => run_node(cfg.prepare()?).await,
        Job::Checked(path) => {
            println!("{}: valid", path.display());
            Ok(())
        }
        Job::Ls(args) => ambassador::ls::run(common, args).await,
        Job::Status(args) => ambassador::control::print_status(args.json).await,
        Job::Mesh(MeshCommand::New { out }) => commands::mesh_new(out.as_deref()),
        Job::Mesh(MeshCommand::Show) => commands::mesh_show(common),
        Job::Ca(CaCommand::Init { out }) => commands::ca_init(out),
        Job::Ca(CaCommand::Issue(args)) => commands::ca_issue(common, args),
        Job::Completions(shell) => commands::completions(shell),
        Job::Man(out) => commands::man(out),
    }
}

/// What clap refused: `--help` and `--version` as clap prints them; a bare `ambassador` (or a
/// command without its subcommand) gets the help on stderr and exit 2; anything else is one
/// line, `ambassador: ...`, and exit 2, like every other usage error.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => failed(&Failure::usage(one_line(&e.render().to_string()))),
    }
}

/// clap's error text on one line: its `error: ` prefix, usage block and "For more information"
/// footer dropped (one pointer to `--help` instead), the rest joined.
fn one_line(rendered: &str) -> String {
    let mut out = String::new();
    let mut in_usage = false;
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") {
            in_usage = true;
        } else if line.is_empty() {
            in_usage = false;
        } else if !in_usage && !line.starts_with("For more information") {
            if !out.is_empty() {
                // A tip is a sentence of its own; a continuation (the possible values) is not.
                out.push_str(if line.starts_with("tip:") { "; " } else { " " });
            }
            out.push_str(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    format!("{out} (try --help)")
}

/// Prints a failure and gives its exit code.
fn failed(f: &Failure) -> ExitCode {
    eprintln!("ambassador: {f}");
    ExitCode::from(f.exit_code() as u8)
}

/// A current-thread runtime by default: a sidecar's work is a few QUIC connections, each
/// driven by one task, and one thread avoids cross-thread wake-ups on the data path
/// (measured against a one-worker multi-thread runtime: 1.7x the requests/s at 50 clients,
/// half the CPU per request, lower 1-client latency; benches/results.md).
/// AMBASSADOR_WORKER_THREADS=N runs N worker threads instead.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
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
    builder.enable_all().build()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    // Configuration first: a bad one is one line and exit 2, before anything is written.
    let job = match job(&cli) {
        Ok(job) => job,
        Err(f) => return failed(&f),
    };
    let format = match &job {
        Job::Node(cfg) => cfg.log_format,
        _ => cli.common.log_format.unwrap_or_default(),
    };
    init_logging(format, cli.common.verbose);
    // ring for the whole process, as the default of libraries that take it; the mesh's TLS
    // configurations use ring with their own suite order (identity::provider). An error means
    // one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ambassador: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(&cli.common, job)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => failed(&f),
    }
}
