//! `region-node`: with no arguments, a one-node region named `local` on
//! 127.0.0.1:8080 with a default app.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use starling_node::config::{self, LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "region-node", version, about = "Starling region node")]
struct Cli {
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let loaded = config::load(cli.config.as_deref())?;
    let mut config = loaded.config;
    if let Some(addr) = cli.listen {
        config.listen.client = addr;
    }
    if let Some(dir) = cli.data_dir {
        config.node.data_dir = dir;
    }
    if let Some(format) = cli.log_format {
        config.log.format = match format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => anyhow::bail!("unknown log format {other:?} (text or json)"),
        };
    }

    init_tracing(&config.log);
    for warning in loaded.warnings {
        tracing::warn!("{warning}");
    }

    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(starling_node::server::serve(
        config,
        cli.describe,
        shutdown_signal(),
    ))
}

fn init_tracing(log: &config::LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
