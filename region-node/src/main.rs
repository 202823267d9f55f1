//! `region-node`: with no arguments, a one-node region named `local` on
//! 127.0.0.1:8080 with a default app. Subcommands manage the cluster CA and start a
//! local development region.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use starling_node::config::{self, ConfigError, LogFormat};
use starling_node::{launcher, logging, tls};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "region-node", version, about = "Starling region node")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write where this node listens and the credentials it accepts to this file.
    #[arg(long)]
    describe: Option<PathBuf>,
    /// Override `listen.client`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override `node.data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override `log.format` (`text` or `json`).
    #[arg(long)]
    log_format: Option<String>,
    /// Check the configuration (file, environment and flags, and that the files it
    /// names can be read), print the result and exit: 0 when it is valid, 78 when not.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Manage the cluster certificate authority.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Start a local federation on loopback: regions of nodes, each behind an entry
    /// balancer, and their global master.
    Dev(launcher::DevArgs),
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Create a cluster CA (`ca.pem`, `ca.key`) in a directory.
    Create {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node (or operator) certificate under the CA.
    Issue {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Node id (or `operator`); the certificate's name.
        #[arg(long)]
        name: String,
        /// Where to write `<name>.pem` and `<name>.key` (default: the CA directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The exit code of a configuration that is not valid (sysexits' CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => run_node(cli.run),
        Some(Cmd::Ca(CaCmd::Create { dir })) => {
            tls::create_ca(&dir)?;
            println!("created cluster CA in {}", dir.display());
            Ok(())
        }
        Some(Cmd::Ca(CaCmd::Issue { dir, name, out })) => {
            let files = tls::issue(&dir, &name, out.as_deref().unwrap_or(&dir))?;
            println!(
                "issued {} and {}",
                files.cert.display(),
                files.key.display()
            );
            Ok(())
        }
        Some(Cmd::Dev(args)) => {
            init_tracing(&config::LogConfig::default());
            runtime(0)?.block_on(launcher::run(args, shutdown_signal()))
        }
    }
}

fn run_node(args: RunArgs) -> anyhow::Result<()> {
    let loaded = config::load(args.config.as_deref())?;
    let mut config = loaded.config;
    if let Some(addr) = args.listen {
        config.listen.client = addr;
    }
    if let Some(dir) = args.data_dir {
        config.node.data_dir = dir;
    }
    if let Some(format) = &args.log_format {
        config.log.format = match format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                let why = format!("--log-format {other:?}: expected text or json");
                return Err(ConfigError::Semantic(why).into());
            }
        };
    }
    config::check_files(&config)?;
    if args.check_config {
        for warning in &loaded.warnings {
            println!("warning: {warning}");
        }
        let source = args
            .config
            .as_ref()
            .map_or("defaults".into(), |p| p.display().to_string());
        println!("configuration OK: {source}");
        return Ok(());
    }

    init_tracing(&config.log);
    for warning in loaded.warnings {
        tracing::warn!("{warning}");
    }
    runtime(config.node.worker_threads)?.block_on(starling_node::server::serve(
        config,
        args.describe,
        shutdown_signal(),
    ))
}

/// The multi-threaded runtime, with `threads` workers (0: one per core, or
/// `TOKIO_WORKER_THREADS`).
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.build().context("starting the runtime")
}

fn init_tracing(log: &config::LogConfig) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| log.level.clone());
    let filter = EnvFilter::new(logging::filter_directives(&spec));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on Ctrl-C, SIGTERM, or (for children of `region-node dev`) when the
/// launcher that started this process is gone.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
        _ = parent_gone() => tracing::info!("launcher is gone; stopping"),
    }
}

/// With `STARLING_EXIT_WITH_PARENT` set, resolves once this process is re-parented,
/// which is what happens when its parent dies, however it dies.
async fn parent_gone() {
    if std::env::var_os("STARLING_EXIT_WITH_PARENT").is_none() {
        return std::future::pending().await;
    }
    let parent = std::os::unix::process::parent_id();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}
