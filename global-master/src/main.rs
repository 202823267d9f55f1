//! `global-master`: runs one member of the raft-replicated control plane, and holds
//! the operator subcommands (move-home, declare-lost, state, members, rules, status,
//! write, read) and the cluster CA tools.
//!
//! Operator subcommands present a certificate of the cluster CA (`--ca --cert --key`),
//! take the members' raft addresses (`--addr a,b,c`) and follow the leader. They print
//! JSON on standard output and exit 0 on success, 75 (`EX_TEMPFAIL`) when the group
//! could not answer in time (no quorum, no reachable leader: retry later), and 1 when
//! the request was refused or is wrong.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};
use starling_global::api::{Answer, Consistency, MembershipChange, Query, ReadRequest};
use starling_global::client::{retriable, Client, ClientError};
use starling_global::config::{self, LogFormat};
use starling_global::member::status_json;
use starling_global::operator;
use starling_global::state::{Command, PlacementRule, Response};
use starling_proto::tls::TlsFiles;
use tracing_subscriber::EnvFilter;

/// The exit code of a request the group could not answer in time (sysexits' TEMPFAIL).
const EXIT_RETRIABLE: u8 = 75;
/// The exit code of a configuration that is not valid (sysexits' CONFIG).
const EXIT_CONFIG: u8 = 78;

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
    /// Check the configuration (file, environment and flags, and that the certificate
    /// files can be read), print the result and exit: 0 when it is valid, 78 when not.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Move a channel's home to another region, under a new epoch.
    MoveHome {
        /// The channel, `appId/name`.
        #[arg(long)]
        channel: String,
        /// The region to home it in (registered, not lost).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        group: Group,
    },
    /// Declare a region lost: its channels move to surviving regions with new epochs.
    DeclareLost {
        #[arg(long)]
        region: String,
        #[command(flatten)]
        group: Group,
    },
    /// Print the catalog as JSON: regions and their liveness, homes and epochs, rules,
    /// apps (key names and capabilities, never secrets) and revocations.
    State {
        /// Answer from the first member's own applied state instead of the leader's
        /// (works without a quorum; may be behind).
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        group: Group,
    },
    /// Add or remove a raft member.
    #[command(subcommand)]
    Members(MembersCmd),
    /// Manage placement rules.
    #[command(subcommand)]
    Rules(RulesCmd),
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
        #[arg(long)]
        command_json: String,
        #[command(flatten)]
        group: Group,
    },
    /// Read from the catalog and print the answer as JSON.
    Read {
        /// The query (JSON): "Catalog", {"Home":{"channel":"app/name"}}, {"App":{"app_id":"x"}}.
        #[arg(long, default_value = "\"Catalog\"")]
        query_json: String,
        /// Answer from the first member's own applied state instead of the leader's.
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        group: Group,
    },
    /// Manage the cluster certificate authority (same layout as `region-node ca`).
    #[command(subcommand)]
    Ca(CaCmd),
}

#[derive(Debug, Subcommand)]
enum MembersCmd {
    /// Add a member: as a learner first, promoted to voter once it has caught up. Start
    /// the new member first (its `cluster.members` must name it; it waits to be added).
    Add {
        #[arg(long)]
        id: u64,
        /// Where the other members reach its `listen.raft` (`host:port`).
        #[arg(long)]
        raft_addr: String,
        /// Its `listen.http`: when given, the command also waits until the new member
        /// reports itself ready on `/health`.
        #[arg(long)]
        http_addr: Option<String>,
        #[command(flatten)]
        group: Group,
    },
    /// Remove a member (voter or learner). Stop its process afterwards.
    Remove {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        group: Group,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCmd {
    /// Replace the placement rules with those in a JSON file:
    /// `[{"app_id": "*", "prefix": "eu-only:", "region": "eu"}]`. The first rule that
    /// matches a new channel and names a live region decides its home.
    Set {
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        group: Group,
    },
}

/// Which group an operator command talks to, and as whom.
#[derive(Debug, clap::Args)]
struct Group {
    /// Members' raft addresses, comma-separated; redirects to the leader are followed.
    #[arg(long, value_delimiter = ',', required = true)]
    addr: Vec<String>,
    /// Give up after this long without the group answering (exit code 75).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    #[command(flatten)]
    tls: ClientTls,
}

impl Group {
    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.addr.clone(), &self.tls.files())?)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run_member(cli.run),
        Some(Cmd::Ca(ca)) => run_ca(ca),
        Some(command) => runtime().and_then(|rt| rt.block_on(run_operator(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_retriable(&error) => {
            eprintln!(
                "error (retriable): {error:#}\nthe global master has no quorum or no reachable \
                 leader right now; nothing was answered. A write may still take effect if a \
                 leader had logged it before; retry later."
            );
            ExitCode::from(EXIT_RETRIABLE)
        }
        Err(error) if error.downcast_ref::<config::ConfigError>().is_some() => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the group could not answer in time, as opposed to refusing.
fn is_retriable(error: &anyhow::Error) -> bool {
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::GaveUp(_)) => true,
        Some(ClientError::Refused(status)) => retriable(status),
        _ => false,
    }
}

fn run_ca(command: CaCmd) -> anyhow::Result<()> {
    match command {
        CaCmd::Create { dir } => {
            starling_global::ca::create_ca(&dir)?;
            println!("created cluster CA in {}", dir.display());
        }
        CaCmd::Issue { dir, name, out } => {
            let files = starling_global::ca::issue(&dir, &name, out.as_deref().unwrap_or(&dir))?;
            println!(
                "issued {} and {}",
                files.cert.display(),
                files.key.display()
            );
        }
    }
    Ok(())
}

async fn run_operator(command: Cmd) -> anyhow::Result<()> {
    let output = match command {
        Cmd::MoveHome { channel, to, group } => {
            let command = Command::MoveHome {
                channel,
                to_region: to,
                now_ms: now_ms(),
            };
            commit(&group, &command).await?
        }
        Cmd::DeclareLost { region, group } => {
            let command = Command::DeclareRegionLost {
                region,
                now_ms: now_ms(),
            };
            commit(&group, &command).await?
        }
        Cmd::State { local, group } => state(&group, local).await?,
        Cmd::Members(members) => change_members(members).await?,
        Cmd::Rules(RulesCmd::Set { file, group }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let rules: Vec<PlacementRule> = serde_json::from_str(&text)
                .with_context(|| format!("parsing {} as a list of rules", file.display()))?;
            commit(&group, &Command::SetPlacementRules { rules }).await?
        }
        Cmd::Status { addr, tls } => {
            let mut client = Client::new(vec![addr.clone()], &tls.files())?;
            status_json(&client.status(&addr).await?)
        }
        Cmd::Write {
            command_json,
            group,
        } => {
            let command: Command =
                serde_json::from_str(&command_json).context("parsing --command-json")?;
            let response = write(&group, &command).await?;
            serde_json::to_value(&response)?
        }
        Cmd::Read {
            query_json,
            local,
            group,
        } => {
            let query: Query = serde_json::from_str(&query_json).context("parsing --query-json")?;
            serde_json::to_value(read(&group, query, local).await?)?
        }
        Cmd::Ca(_) => unreachable!("handled before the runtime starts"),
    };
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

/// Commits `command` and prints its outcome; a refusal by the state machine is an
/// error.
async fn commit(group: &Group, command: &Command) -> anyhow::Result<serde_json::Value> {
    let response = write(group, command).await?;
    match &response.outcome {
        Ok(outcome) => {
            let mut view = operator::outcome_view(outcome);
            view["version"] = response.version.into();
            Ok(view)
        }
        Err(refused) => anyhow::bail!("refused: {refused}"),
    }
}

async fn write(group: &Group, command: &Command) -> anyhow::Result<Response> {
    let mut client = group.client()?;
    Ok(client.write(command, group.timeout()).await?)
}

async fn read(
    group: &Group,
    query: Query,
    local: bool,
) -> anyhow::Result<starling_global::api::ReadReply> {
    let mut client = group.client()?;
    let consistency = if local {
        Consistency::Local
    } else {
        Consistency::Linearizable
    };
    let request = ReadRequest { query, consistency };
    let reply = if local {
        client.read_at(&group.addr[0], &request).await?
    } else {
        client.read(&request, group.timeout()).await?
    };
    Ok(reply)
}

async fn state(group: &Group, local: bool) -> anyhow::Result<serde_json::Value> {
    let reply = read(group, Query::Catalog, local).await?;
    let Answer::Catalog(catalog) = reply.answer else {
        anyhow::bail!("the member answered something other than the catalog");
    };
    Ok(operator::state_view(&catalog, now_ms()))
}

async fn change_members(command: MembersCmd) -> anyhow::Result<serde_json::Value> {
    let (change, group, http_addr) = match command {
        MembersCmd::Add {
            id,
            raft_addr,
            http_addr,
            group,
        } => (MembershipChange::Add { id, raft_addr }, group, http_addr),
        MembersCmd::Remove { id, group } => (MembershipChange::Remove { id }, group, None),
    };
    let mut client = group.client()?;
    let reply = client.change_members(&change, group.timeout()).await?;
    if let Some(http_addr) = http_addr {
        wait_ready(&http_addr, group.timeout()).await?;
    }
    Ok(operator::membership_view(&reply))
}

/// Polls a member's `/health` until it answers 200.
async fn wait_ready(http_addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let url = format!("http://{http_addr}/health");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let give_up = tokio::time::Instant::now() + timeout;
    loop {
        let last = match http.get(&url).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => format!("{url} answered {}", response.status()),
            Err(error) => format!("{url}: {error}"),
        };
        if tokio::time::Instant::now() >= give_up {
            anyhow::bail!("the membership changed, but the member is not ready: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    since_epoch.map_or(0, |d| d.as_millis() as u64)
}

fn run_member(args: RunArgs) -> anyhow::Result<()> {
    let loaded = config::load(args.config.as_deref())?;
    let mut config = loaded.config;
    if let Some(dir) = args.data_dir {
        config.member.data_dir = dir;
    }
    if let Some(format) = &args.log_format {
        config.log.format = match format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                let why = format!("--log-format {other:?}: expected text or json");
                return Err(config::ConfigError::Semantic(why).into());
            }
        };
    }
    config::validate(&config)?;
    config::check_files(&config)?;
    if args.check_config {
        for warning in &loaded.warnings {
            println!("warning: {warning}");
        }
        let source = (args.config.as_ref()).map_or("defaults".into(), |p| p.display().to_string());
        println!("configuration OK: {source}");
        return Ok(());
    }

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
