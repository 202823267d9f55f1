//! `global-master`: runs one member of the raft-replicated control plane, and holds
//! the operator subcommands (status, write, read) and the cluster CA tools.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use starling_global::api::{Consistency, Query, ReadRequest};
use starling_global::client::Client;
use starling_global::config::{self, LogFormat};
use starling_global::member::status_json;
use starling_global::state::Command;
use starling_proto::tls::TlsFiles;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "global-master",
    version,
    about = "Starling global master (raft control plane)"
)]
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
    /// Write where this member listens to this file (JSON, mode 0600) once serving.
    #[arg(long)]
    describe: Option<PathBuf>,
    /// Override `member.data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override `log.format` (`text` or `json`).
    #[arg(long)]
    log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print a member's view of the group as JSON.
    Status {
        /// The member's raft address (`host:port`).
        #[arg(long)]
        addr: String,
        #[command(flatten)]
        tls: ClientTls,
    },
    /// Commit a command (JSON, as the state machine's `Command`) and print the response.
    /// Example: --command-json '{"RegisterRegion":{"name":"eu","bridges":[],"now_ms":1}}'
    Write {
        /// Members' raft addresses, comma-separated; redirects to the leader are followed.
        #[arg(long, value_delimiter = ',', required = true)]
        addr: Vec<String>,
        #[arg(long)]
        command_json: String,
        /// Give up after this long without a leader taking the command.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        #[command(flatten)]
        tls: ClientTls,
    },
    /// Read from the catalog and print the answer as JSON.
    Read {
        /// Members' raft addresses, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        addr: Vec<String>,
        /// The query (JSON): "Catalog", {"Home":{"channel":"app/name"}}, {"App":{"app_id":"x"}}.
        #[arg(long, default_value = "\"Catalog\"")]
        query_json: String,
        /// Answer from the first member's own applied state instead of the leader's.
        #[arg(long)]
        local: bool,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        #[command(flatten)]
        tls: ClientTls,
    },
    /// Manage the cluster certificate authority (same layout as `region-node ca`).
    #[command(subcommand)]
    Ca(CaCmd),
}

/// The certificate an operator command presents: one the cluster CA issued.
#[derive(Debug, clap::Args)]
struct ClientTls {
    /// The cluster CA certificate.
    #[arg(long)]
    ca: PathBuf,
    /// This client's certificate (for example `operator.pem`).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key.
    #[arg(long)]
    key: PathBuf,
}

impl ClientTls {
    fn files(&self) -> TlsFiles {
        TlsFiles {
            ca_cert: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Create a cluster CA (`ca.pem`, `ca.key`) in a directory.
    Create {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a member (or operator) certificate under the CA.
    Issue {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's name (`gm-1`, `operator`).
        #[arg(long)]
        name: String,
        /// Where to write `<name>.pem` and `<name>.key` (default: the CA directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => run_member(cli.run),
        Some(Cmd::Ca(CaCmd::Create { dir })) => {
            starling_global::ca::create_ca(&dir)?;
            println!("created cluster CA in {}", dir.display());
            Ok(())
        }
        Some(Cmd::Ca(CaCmd::Issue { dir, name, out })) => {
            let files = starling_global::ca::issue(&dir, &name, out.as_deref().unwrap_or(&dir))?;
            println!(
                "issued {} and {}",
                files.cert.display(),
                files.key.display()
            );
            Ok(())
        }
        Some(Cmd::Status { addr, tls }) => runtime()?.block_on(async {
            let mut client = Client::new(vec![addr.clone()], &tls.files())?;
            let status = client.status(&addr).await?;
            println!("{}", serde_json::to_string_pretty(&status_json(&status))?);
            Ok(())
        }),
        Some(Cmd::Write {
            addr,
            command_json,
            timeout_ms,
            tls,
        }) => {
            let command: Command =
                serde_json::from_str(&command_json).context("parsing --command-json")?;
            runtime()?.block_on(async {
                let mut client = Client::new(addr, &tls.files())?;
                let response = client
                    .write(&command, Duration::from_millis(timeout_ms))
                    .await?;
                println!("{}", serde_json::to_string_pretty(&response)?);
                Ok(())
            })
        }
        Some(Cmd::Read {
            addr,
            query_json,
            local,
            timeout_ms,
            tls,
        }) => {
            let query: Query = serde_json::from_str(&query_json).context("parsing --query-json")?;
            let consistency = if local {
                Consistency::Local
            } else {
                Consistency::Linearizable
            };
            runtime()?.block_on(async {
                let mut client = Client::new(addr.clone(), &tls.files())?;
                let request = ReadRequest { query, consistency };
                let reply = if local {
                    client.read_at(&addr[0], &request).await?
                } else {
                    client
                        .read(&request, Duration::from_millis(timeout_ms))
                        .await?
                };
                println!("{}", serde_json::to_string_pretty(&reply)?);
                Ok(())
            })
        }
    }
}

fn run_member(args: RunArgs) -> anyhow::Result<()> {
    let loaded = config::load(args.config.as_deref())?;
    let mut config = loaded.config;
    if let Some(dir) = args.data_dir {
        config.member.data_dir = dir;
    }
    if let Some(format) = args.log_format {
        config.log.format = match format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => anyhow::bail!("unknown log format {other:?} (text or json)"),
        };
    }
    config::validate(&config)?;

    init_tracing(&config.log);
    for warning in loaded.warnings {
        tracing::warn!("{warning}");
    }
    runtime()?.block_on(starling_global::server::serve(
        config,
        args.describe,
        shutdown_signal(),
    ))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the runtime")
}

fn init_tracing(log: &config::LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
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

/// Resolves on Ctrl-C or SIGTERM, or (for children of a launcher that sets
/// `STARLING_EXIT_WITH_PARENT`) when the process that started this one is gone.
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
