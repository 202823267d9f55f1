//! `region-node dev`: a whole federation on loopback from one command, for development
//! and tests. It creates a throwaway cluster CA and starts the global master: one
//! member runs in this process (served to the nodes over mutual TLS), several run as
//! `global-master` child processes. Then, region by region, it starts every node as a
//! child process with its own configuration (each region its own mesh, the regions
//! linked by bridges), puts a small TCP balancer in front of each region (the region's
//! entry, standing in for an operator's load balancer), writes the describe file, and
//! stops everything on Ctrl-C or SIGTERM. Processes that die are not restarted.
//!
//! Children run in process groups of their own, so a Ctrl-C in the terminal reaches
//! only the launcher, which then stops the nodes before the global master they may
//! still use while draining. A child whose launcher dies stops by itself
//! (`STARLING_EXIT_WITH_PARENT`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tracing::{debug, info, warn};

use crate::config::{AppConfig, KeyConfig};
use crate::data_dir::{atomic_write, random_string};
use crate::describe::{
    Describe, DescribedApp, DescribedGlobalMaster, DescribedNode, DescribedRegion,
};
use crate::tls;
use starling_global::embedded::Embedded;

/// How long a process may take to write its describe file and report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const HEALTH_PERIOD: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(100);

/// Set in every child's environment: the child stops once its launcher is gone.
const EXIT_WITH_PARENT: &str = "STARLING_EXIT_WITH_PARENT";

/// Raft timers of a global master group of processes: elections within a couple of
/// seconds, yet no spurious ones on a loaded 2-core machine.
const RAFT_TIMERS: &str = "heartbeat_ms = 100\nelection_timeout_min_ms = 600\n\
                           election_timeout_max_ms = 1200\nrequest_timeout_ms = 3000\n";

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Regions to start, comma-separated. Each gets its own mesh and entry; several
    /// regions are linked by bridges.
    #[arg(long, default_value = "local", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Nodes per region.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Global master members: 1 runs inside the launcher, more run as `global-master`
    /// processes (the binary beside this one). Default: 1 with one region, 3 with more.
    #[arg(long)]
    pub global_masters: Option<usize>,
    /// First port of a fixed layout: each region's entry then its nodes' client ports,
    /// region after region, then each global master process's raft and HTTP ports.
    /// 0 lets the system pick every port.
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
    /// Where the processes keep their data; a fresh temporary folder by default,
    /// removed again when the launcher stops cleanly.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Write the describe file here once every process is ready.
    #[arg(long)]
    pub describe: Option<PathBuf>,
    /// Mesh failure timeout for the nodes, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub failure_timeout_ms: u64,
}

/// What to start, validated.
struct Plan {
    regions: Vec<String>,
    nodes: usize,
    global_masters: usize,
    base_port: u16,
    failure_timeout_ms: u64,
}

impl Plan {
    fn new(args: &DevArgs) -> anyhow::Result<Self> {
        let regions = args.regions.clone();
        ensure!(!regions.is_empty(), "--regions names no region");
        for (i, name) in regions.iter().enumerate() {
            // Region names become node ids, certificate names and folder names.
            let valid = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            ensure!(
                !name.is_empty() && valid,
                "region name {name:?} must be letters, digits, '-' or '_'"
            );
            ensure!(
                !regions[..i].contains(name),
                "region {name:?} is listed twice"
            );
        }
        ensure!(args.nodes >= 1, "--nodes must be at least 1");
        let default_masters = if regions.len() == 1 { 1 } else { 3 };
        let global_masters = args.global_masters.unwrap_or(default_masters);
        ensure!(global_masters >= 1, "--global-masters must be at least 1");

        let plan = Self {
            regions,
            nodes: args.nodes,
            global_masters,
            base_port: args.base_port,
            failure_timeout_ms: args.failure_timeout_ms,
        };
        let last = usize::from(plan.base_port) + plan.ports_used();
        ensure!(
            plan.base_port == 0 || last <= usize::from(u16::MAX) + 1,
            "--base-port {} leaves no room for the {} ports of this layout",
            plan.base_port,
            plan.ports_used()
        );
        Ok(plan)
    }

    /// Whether the global master runs as processes rather than inside the launcher.
    fn global_processes(&self) -> bool {
        self.global_masters > 1
    }

    fn ports_used(&self) -> usize {
        let masters = if self.global_processes() {
            2 * self.global_masters
        } else {
            0
        };
        self.regions.len() * (self.nodes + 1) + masters
    }

    /// The port at `offset` in the `--base-port` layout, or 0 without one.
    fn port(&self, offset: usize) -> u16 {
        if self.base_port == 0 {
            return 0;
        }
        // Plan::new checked that the whole layout fits below 65536.
        u16::try_from(usize::from(self.base_port) + offset).expect("layout checked")
    }

    fn entry_port(&self, region: usize) -> u16 {
        self.port(region * (self.nodes + 1))
    }

    /// Client port of the `index`th node (1-based) of the `region`th region.
    fn client_port(&self, region: usize, index: usize) -> u16 {
        self.port(region * (self.nodes + 1) + index)
    }

    /// Raft and HTTP port of the `member`th global master process (0-based).
    fn global_ports(&self, member: usize) -> (u16, u16) {
        let first = self.regions.len() * (self.nodes + 1) + 2 * member;
        (self.port(first), self.port(first + 1))
    }
}

/// The launcher's data folder.
struct Root {
    path: PathBuf,
    /// The launcher made it (no `--data-dir`): a clean stop removes it.
    temporary: bool,
}

impl Root {
    fn open(data_dir: Option<&Path>) -> anyhow::Result<Self> {
        let (path, temporary) = match data_dir {
            Some(dir) => (dir.to_owned(), false),
            None => {
                let dir = tempfile::Builder::new().prefix("starling-dev-").tempdir()?;
                (dir.keep(), true)
            }
        };
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        // Children get absolute paths, whatever directory they are restarted from.
        let path = std::fs::canonicalize(&path)?;
        Ok(Self { path, temporary })
    }

    fn remove_if_temporary(&self) {
        if !self.temporary {
            return;
        }
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            warn!(dir = %self.path.display(), "could not remove the data folder: {error}");
        }
    }
}

/// Everything the launcher started. A child is recorded as soon as it is spawned, so
/// a failed start or an early Ctrl-C stops what was already running.
#[derive(Default)]
struct Fleet {
    /// The in-process member of a one-member global master.
    embedded: Option<Embedded>,
    /// `global-master` processes.
    masters: Vec<Child>,
    nodes: Vec<Child>,
}

impl Fleet {
    /// Stops the nodes, then the global master: a draining node may still use it.
    async fn stop(&mut self) {
        stop_children(&mut self.nodes).await;
        stop_children(&mut self.masters).await;
        if let Some(embedded) = self.embedded.take() {
            embedded.shutdown().await;
        }
    }
}

pub async fn run(
    args: DevArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    let root = Root::open(args.data_dir.as_deref())?;
    let shared = Shared::create(&root.path)?;

    let mut fleet = Fleet::default();
    // Polled from the start, so the signal handlers are in place before any child is.
    tokio::pin!(shutdown);
    let started = tokio::select! {
        started = start(&plan, &root.path, &shared, &mut fleet) => Some(started),
        () = &mut shutdown => None,
    };
    match started {
        Some(Ok(describe)) => {
            let written = match &args.describe {
                Some(path) => crate::describe::write(path, &describe)
                    .with_context(|| format!("writing {}", path.display())),
                None => Ok(()),
            };
            if let Err(error) = written {
                fleet.stop().await;
                return Err(error);
            }
            print_summary(&describe, &root.path);
            shutdown.await;
        }
        Some(Err(error)) => {
            fleet.stop().await;
            return Err(error.context(format!("logs are in {}", root.path.display())));
        }
        None => info!("stopped before every process had started"),
    }

    info!("stopping every process");
    fleet.stop().await;
    root.remove_if_temporary();
    Ok(())
}

/// Starts the global master, then every region; returns what the describe file says.
async fn start(
    plan: &Plan,
    root: &Path,
    shared: &Shared,
    fleet: &mut Fleet,
) -> anyhow::Result<Describe> {
    let global_masters = if plan.global_processes() {
        start_global_processes(plan, root, shared, &mut fleet.masters).await?
    } else {
        let (embedded, described) = start_embedded_global(root, shared).await?;
        fleet.embedded = Some(embedded);
        vec![described]
    };
    let members: Vec<String> = global_masters
        .iter()
        .filter_map(|m| m.raft.clone())
        .collect();

    let mut regions = Vec::new();
    for (index, name) in plan.regions.iter().enumerate() {
        let region = RegionSpec {
            index,
            name,
            members: &members,
            bridges: plan.regions.len() > 1,
        };
        let nodes = start_region(plan, root, shared, &region, &mut fleet.nodes).await?;
        regions.push((index, name, nodes));
    }

    // Every node is healthy (mesh joined, global master reached) before any entry
    // accepts clients, and every member is before the describe file claims readiness.
    let mut described_regions = Vec::new();
    for (index, name, nodes) in regions {
        let clients: Vec<SocketAddr> = nodes
            .iter()
            .map(|n| n.client.parse())
            .collect::<Result<_, _>>()?;
        for (node, addr) in nodes.iter().zip(&clients) {
            wait_healthy(&node.id, *addr).await?;
        }
        let entry = TcpListener::bind(("127.0.0.1", plan.entry_port(index)))
            .await
            .with_context(|| format!("binding the entry of region {name}"))?;
        let entry_addr = entry.local_addr()?;
        tokio::spawn(balance(entry, clients));
        described_regions.push(DescribedRegion {
            name: name.clone(),
            entry: entry_addr.to_string(),
            nodes,
        });
    }
    if plan.global_processes() {
        for member in &global_masters {
            let http = member.http.as_deref().unwrap_or_default().parse()?;
            wait_healthy(&member.id, http).await?;
        }
    }

    Ok(Describe {
        admin_token: shared.admin_token.clone(),
        apps: vec![shared.app_description()],
        global_masters,
        regions: described_regions,
    })
}

/// A one-member global master in this process, served to the nodes over mutual TLS
/// under the dev CA, so an app created through any node's admin API works on every
/// node.
async fn start_embedded_global(
    root: &Path,
    shared: &Shared,
) -> anyhow::Result<(Embedded, DescribedGlobalMaster)> {
    let files = tls::issue(&shared.ca_dir, "global-master", &root.join("global-master"))?;
    let files = starling_proto::tls::TlsFiles {
        ca_cert: files.ca_cert,
        cert: files.cert,
        key: files.key,
    };
    let global = Embedded::start(&root.join("global-master").join("data")).await?;
    let addr = global
        .serve_control(SocketAddr::from(([127, 0, 0, 1], 0)), &files)
        .await?;
    info!(%addr, "global master serving");
    let described = DescribedGlobalMaster {
        id: "embedded".into(),
        pid: std::process::id(),
        raft: Some(addr.to_string()),
        http: None,
        argv: std::env::args().collect(),
    };
    Ok((global, described))
}

/// Starts `global-master` processes `gm-1` … `gm-M`, each with its own folder,
/// certificate and configuration, and waits until one of them reports ready.
async fn start_global_processes(
    plan: &Plan,
    root: &Path,
    shared: &Shared,
    children: &mut Vec<Child>,
) -> anyhow::Result<Vec<DescribedGlobalMaster>> {
    let exe = std::env::current_exe()?.with_file_name("global-master");
    ensure!(
        exe.exists(),
        "{} not found: {} global masters run as global-master processes, which must sit \
         beside region-node (cargo build --workspace builds both)",
        exe.display(),
        plan.global_masters
    );
    let addrs = global_addrs(plan)?;

    let mut described = Vec::new();
    for (index, (raft, http)) in addrs.iter().enumerate() {
        let id = index + 1;
        let name = format!("gm-{id}");
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir)?;
        let files = tls::issue(&shared.ca_dir, &name, &dir)?;
        let config_path = dir.join("config.toml");
        atomic_write(
            &config_path,
            global_config(id, &dir, &addrs, &files).as_bytes(),
        )?;

        let argv = vec![
            exe.display().to_string(),
            "--config".into(),
            config_path.display().to_string(),
        ];
        let log = dir.join("global-master.log");
        let child = spawn(&argv, &log).with_context(|| format!("starting {name}"))?;
        described.push(DescribedGlobalMaster {
            id: name,
            pid: child.id().context("a just-spawned child has a pid")?,
            raft: Some(raft.to_string()),
            http: Some(http.to_string()),
            argv,
        });
        children.push(child);
    }

    wait_global_ready(&described, children).await?;
    Ok(described)
}

/// Every member's raft and HTTP address. The members must know each other's before
/// any starts, so without `--base-port` the ports are ones the system just handed out
/// and this launcher released again; another process could take one in between, which
/// on a development machine is rare enough to accept (the member then fails to start
/// and says so in its log).
fn global_addrs(plan: &Plan) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    if plan.base_port != 0 {
        return Ok((0..plan.global_masters)
            .map(|m| plan.global_ports(m))
            .map(|(raft, http)| (loopback(raft), loopback(http)))
            .collect());
    }
    // All bound at once, so they differ.
    let held = (0..2 * plan.global_masters)
        .map(|_| std::net::TcpListener::bind(loopback(0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let ports = held
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(ports.chunks(2).map(|p| (p[0], p[1])).collect())
}

fn global_config(
    id: usize,
    dir: &Path,
    addrs: &[(SocketAddr, SocketAddr)],
    files: &tls::TlsFiles,
) -> String {
    let (raft, http) = addrs[id - 1];
    let members: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, (raft, http))| {
            format!(
                "  {{ id = {}, raft_addr = \"{raft}\", http_addr = \"{http}\" }},",
                i + 1
            )
        })
        .collect();
    format!(
        r#"[member]
id = {id}
data_dir = "{data}"

[listen]
raft = "{raft}"
http = "{http}"

[cluster]
members = [
{members}
]
{RAFT_TIMERS}
[tls]
ca_cert = "{ca}"
cert = "{cert}"
key = "{key}"
"#,
        data = dir.join("data").display(),
        members = members.join("\n"),
        ca = files.ca_cert.display(),
        cert = files.cert.display(),
        key = files.key.display(),
    )
}

/// Waits until some member of the group reports ready (it is a voter and knows the
/// leader), failing early if a member exits.
async fn wait_global_ready(
    members: &[DescribedGlobalMaster],
    children: &mut [Child],
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        for (member, child) in members.iter().zip(children.iter_mut()) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "global master {} exited ({status}) while starting",
                    member.id
                );
            }
            let http = member.http.as_deref().unwrap_or_default().parse()?;
            if healthy(http).await {
                info!(member = %member.id, "global master ready");
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no global master member was ready after {START_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What every process of the dev federation shares: CA, admin token, cluster
/// secret, app.
struct Shared {
    ca_dir: PathBuf,
    admin_token: String,
    cluster_secret: String,
    app: AppConfig,
}

impl Shared {
    fn create(root: &Path) -> anyhow::Result<Self> {
        let ca_dir = root.join("ca");
        if !ca_dir.join("ca.key").exists() {
            tls::create_ca(&ca_dir)?;
        }
        let app = AppConfig {
            id: "dev".into(),
            keys: vec![KeyConfig {
                id: "root".into(),
                secret: random_string(32),
                capability: crate::config::default_capability(),
            }],
        };
        Ok(Self {
            ca_dir,
            admin_token: random_string(40),
            cluster_secret: random_string(48),
            app,
        })
    }

    fn app_description(&self) -> DescribedApp {
        DescribedApp {
            id: self.app.id.clone(),
            keys: self
                .app
                .keys
                .iter()
                .map(|k| crate::describe::DescribedKey {
                    key: format!("{}.{}:{}", self.app.id, k.id, k.secret),
                    capability: k.capability.clone(),
                })
                .collect(),
        }
    }
}

struct RegionSpec<'a> {
    index: usize,
    name: &'a str,
    /// The global master's raft addresses.
    members: &'a [String],
    /// Whether the nodes accept bridges from other regions.
    bridges: bool,
}

struct NodeSpec<'a> {
    region: &'a RegionSpec<'a>,
    /// 1-based within the region: the node's id is `<region>-<index>`.
    index: usize,
    client_port: u16,
    seed: Option<SocketAddr>,
}

/// Starts the region's nodes one by one, each seeded with the first one's mesh
/// address, so the region forms one mesh of its own.
async fn start_region(
    plan: &Plan,
    root: &Path,
    shared: &Shared,
    region: &RegionSpec<'_>,
    children: &mut Vec<Child>,
) -> anyhow::Result<Vec<DescribedNode>> {
    let mut nodes: Vec<DescribedNode> = Vec::new();
    let mut seed: Option<SocketAddr> = None;
    for index in 1..=plan.nodes {
        let spec = NodeSpec {
            region,
            index,
            client_port: plan.client_port(region.index, index),
            seed,
        };
        let node = start_node(root, shared, &spec, plan.failure_timeout_ms, children).await?;
        seed = seed.or(node.mesh.as_deref().and_then(|m| m.parse().ok()));
        nodes.push(node);
    }
    for node in &nodes {
        pin_addresses(root, node, &nodes)?;
    }
    Ok(nodes)
}

/// Rewrites a started node's configuration with the addresses it got and every other
/// node of its region as a seed, so a node restarted from its `argv` comes back on the
/// same addresses and rejoins its region (rather than, seedless, forming a region of
/// its own).
fn pin_addresses(
    root: &Path,
    node: &DescribedNode,
    region: &[DescribedNode],
) -> anyhow::Result<()> {
    let path = root.join(&node.id).join("config.toml");
    let config = std::fs::read_to_string(&path)?;
    let seeds: Vec<String> = (region.iter())
        .filter(|other| other.id != node.id)
        .filter_map(|other| other.mesh.as_ref().map(|m| format!("\"{m}\"")))
        .collect();
    let mut pinned = String::new();
    let mut section = "";
    for line in config.lines() {
        if line.starts_with('[') {
            section = if line == "[mesh]" {
                "mesh"
            } else if line == "[listen]" {
                "listen"
            } else {
                ""
            };
        }
        let replaced = match (section, line.split(" = ").next()) {
            ("mesh", Some("listen")) => node.mesh.as_ref().map(|m| format!("listen = \"{m}\"")),
            ("mesh", Some("seeds")) => Some(format!("seeds = [{}]", seeds.join(", "))),
            ("listen", Some("client")) => Some(format!("client = \"{}\"", node.client)),
            _ => None,
        };
        pinned.push_str(replaced.as_deref().unwrap_or(line));
        pinned.push('\n');
    }
    Ok(atomic_write(&path, pinned.as_bytes())?)
}

async fn start_node(
    root: &Path,
    shared: &Shared,
    spec: &NodeSpec<'_>,
    failure_timeout_ms: u64,
    children: &mut Vec<Child>,
) -> anyhow::Result<DescribedNode> {
    let id = format!("{}-{}", spec.region.name, spec.index);
    let dir = root.join(&id);
    std::fs::create_dir_all(&dir)?;
    let files = tls::issue(&shared.ca_dir, &id, &dir)?;
    let config = node_config(shared, spec, &id, &dir, &files, failure_timeout_ms);
    let config_path = dir.join("config.toml");
    atomic_write(&config_path, config.as_bytes())?;

    let describe = dir.join("describe.json");
    let _ = std::fs::remove_file(&describe);
    let argv: Vec<String> = vec![
        std::env::current_exe()?.display().to_string(),
        "--config".into(),
        config_path.display().to_string(),
        "--describe".into(),
        describe.display().to_string(),
    ];
    let log = dir.join("node.log");
    let child = spawn(&argv, &log).with_context(|| format!("starting {id}"))?;
    children.push(child);
    let child = children.last_mut().expect("pushed just above");

    let mut described = wait_described(&describe, child)
        .await
        .with_context(|| format!("{id} did not start; see {}", log.display()))?;
    described.argv = argv;
    info!(node.id = %id, client = %described.client, "node started");
    Ok(described)
}

fn node_config(
    shared: &Shared,
    spec: &NodeSpec<'_>,
    id: &str,
    dir: &Path,
    files: &tls::TlsFiles,
    failure_timeout_ms: u64,
) -> String {
    let seeds = spec.seed.map(|s| format!("\"{s}\"")).unwrap_or_default();
    let members: Vec<String> = spec
        .region
        .members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect();
    let bridge = if spec.region.bridges {
        "\n[bridge]\nlisten = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    let key = &shared.app.keys[0];
    let keepalive = (failure_timeout_ms / 4).max(50);
    format!(
        r#"[node]
id = "{id}"
region = "{region}"
data_dir = "{data}"
cluster_secret = "{secret}"

[listen]
client = "127.0.0.1:{port}"

[mesh]
listen = "127.0.0.1:0"
seeds = [{seeds}]
keepalive_ms = {keepalive}
failure_timeout_ms = {failure_timeout_ms}
dial_interval_ms = 200

[tls]
ca_cert = "{ca}"
cert = "{cert}"
key = "{key_file}"

[admin]
token = "{token}"
loopback_without_token = true

[global]
members = [{members}]
{bridge}
[[apps]]
id = "{app}"

[[apps.keys]]
id = "{key_id}"
secret = "{key_secret}"
capability = '{capability}'
"#,
        region = spec.region.name,
        data = dir.join("data").display(),
        secret = shared.cluster_secret,
        port = spec.client_port,
        ca = files.ca_cert.display(),
        cert = files.cert.display(),
        key_file = files.key.display(),
        token = shared.admin_token,
        members = members.join(", "),
        app = shared.app.id,
        key_id = key.id,
        key_secret = key.secret,
        capability = key.capability,
    )
}

/// Spawns a child in a process group of its own, logging to `log`, told to stop once
/// this launcher is gone.
fn spawn(argv: &[String], log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env(EXIT_WITH_PARENT, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

/// SIGTERMs every child (a node leaves its mesh on purpose, a member steps down), then
/// waits for them together, killing any that outlive [`STOP_TIMEOUT`].
async fn stop_children(children: &mut Vec<Child>) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    let waits = children.iter_mut().map(|child| async move {
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            warn!(pid = ?child.id(), "child did not stop in {STOP_TIMEOUT:?}; killing it");
            let _ = child.kill().await;
        }
    });
    futures_util::future::join_all(waits).await;
    children.clear();
}

/// Waits for a node's own describe file, failing early if the node exits.
async fn wait_described(path: &Path, child: &mut Child) -> anyhow::Result<DescribedNode> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            let describe: serde_json::Value = serde_json::from_slice(&bytes)?;
            let node = describe["regions"][0]["nodes"][0].clone();
            return Ok(serde_json::from_value(node)?);
        }
        if let Some(status) = child.try_wait()? {
            bail!("exited ({status}) before writing {}", path.display());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no describe file at {} after {START_TIMEOUT:?}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_healthy(name: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while !healthy(addr).await {
        if tokio::time::Instant::now() > deadline {
            bail!("{name} at {addr} did not become healthy in {START_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Asks a process's `/health` with a bare HTTP/1.0 request: the balancer needs no
/// more.
async fn healthy(addr: SocketAddr) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: starling\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b"200"))
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A region's entry: accepts client connections and splices each to a healthy
/// node of the region, round robin.
async fn balance(entry: TcpListener, nodes: Vec<SocketAddr>) {
    let healthy_nodes = Arc::new(Mutex::new(nodes.clone()));
    tokio::spawn(watch_health(nodes, healthy_nodes.clone()));

    let mut next = 0usize;
    while let Ok((client, _)) = entry.accept().await {
        let candidates = healthy_nodes.lock().clone();
        if candidates.is_empty() {
            warn!("no healthy node for an entry connection");
            continue;
        }
        let target = candidates[next % candidates.len()];
        next = next.wrapping_add(1);
        tokio::spawn(splice(client, target));
    }
}

async fn watch_health(nodes: Vec<SocketAddr>, healthy_nodes: Arc<Mutex<Vec<SocketAddr>>>) {
    let mut ticker = tokio::time::interval(HEALTH_PERIOD);
    loop {
        ticker.tick().await;
        let mut up = Vec::new();
        for addr in &nodes {
            if healthy(*addr).await {
                up.push(*addr);
            }
        }
        *healthy_nodes.lock() = up;
    }
}

async fn splice(mut client: TcpStream, target: SocketAddr) {
    match TcpStream::connect(target).await {
        Ok(mut upstream) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(error) => debug!(%target, "entry could not reach node: {error}"),
    }
}

fn print_summary(describe: &Describe, root: &Path) {
    let key = &describe.apps[0].keys[0].key;
    let names: Vec<&str> = describe.regions.iter().map(|r| r.name.as_str()).collect();
    let nodes = describe.regions[0].nodes.len();
    println!(
        "Starling dev: {} ({}) of {} each, a global master of {} (data in {})",
        plural(names.len(), "region"),
        names.join(", "),
        plural(nodes, "node"),
        plural(describe.global_masters.len(), "member"),
        root.display()
    );
    for region in &describe.regions {
        println!(
            "region {}: entry (connect clients here): {}",
            region.name, region.entry
        );
        for node in &region.nodes {
            println!(
                "  {}: client {} mesh {} bridge {}",
                node.id,
                node.client,
                node.mesh.as_deref().unwrap_or("-"),
                node.bridge.as_deref().unwrap_or("-")
            );
        }
    }
    for member in &describe.global_masters {
        println!(
            "global master {}: raft {} http {}",
            member.id,
            member.raft.as_deref().unwrap_or("-"),
            member.http.as_deref().unwrap_or("-")
        );
    }
    println!("API key: {key}");
    println!("admin token: {}", describe.admin_token);
    let first = &describe.regions[0].nodes[0].client;
    println!("dashboard: http://{first}/dashboard (metrics: /metrics on every node and member)");
    println!("Ctrl-C stops every process.");
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
