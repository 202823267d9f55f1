//! `region-node dev`: a whole region on loopback from one command, for development
//! and tests. It creates a throwaway cluster CA, runs a one-member global master in
//! its own process (served to the nodes over mutual TLS), starts every node as a child process
//! with its own configuration, puts a small TCP balancer in front of the region (the
//! region's entry, standing in for an operator's load balancer), writes the describe
//! file, and stops everything on Ctrl-C or SIGTERM. Nodes that die are not restarted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
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

/// How long a node may take to write its describe file and report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_PERIOD: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Regions to start, comma-separated. Only one region is supported until region
    /// bridges exist.
    #[arg(long, default_value = "local", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Nodes per region.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Global master members. The launcher runs one itself, embedded and shared by
    /// every node; only 1 (the default) is accepted for now.
    #[arg(long)]
    pub global_masters: Option<usize>,
    /// First port to use (entry, then each node's client port); 0 lets the system pick.
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
    /// Where the nodes keep their data; a fresh temporary folder by default.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Write the describe file here once every process is ready.
    #[arg(long)]
    pub describe: Option<PathBuf>,
    /// Mesh failure timeout for the nodes, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub failure_timeout_ms: u64,
}

struct Started {
    child: Child,
    described: DescribedNode,
}

pub async fn run(
    args: DevArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if args.regions.len() != 1 {
        bail!(
            "only one region can be started until region bridges exist (got {:?})",
            args.regions
        );
    }
    if args.global_masters.is_some_and(|m| m != 1) {
        bail!("the dev launcher runs one embedded global master; --global-masters must be 1");
    }
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let region = args.regions[0].clone();
    let root = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => tempfile::Builder::new()
            .prefix("starling-dev-")
            .tempdir()?
            .keep(),
    };
    std::fs::create_dir_all(&root)?;

    let shared = Shared::create(&root)?;
    let (global, global_addr) = start_global_master(&root, &shared).await?;
    let mut nodes: Vec<Started> = Vec::new();
    let mut seed: Option<SocketAddr> = None;
    for index in 1..=args.nodes {
        let port = |offset: usize| {
            if args.base_port == 0 {
                0
            } else {
                args.base_port + offset as u16
            }
        };
        let spec = NodeSpec {
            index,
            region: &region,
            client_port: port(index),
            seed,
        };
        let started =
            start_node(&root, &shared, &spec, global_addr, args.failure_timeout_ms).await?;
        seed = seed.or(started
            .described
            .mesh
            .as_deref()
            .and_then(|m| m.parse().ok()));
        nodes.push(started);
    }

    let clients: Vec<SocketAddr> = nodes
        .iter()
        .map(|n| n.described.client.parse())
        .collect::<Result<_, _>>()?;
    for addr in &clients {
        wait_healthy(*addr).await?;
    }
    let entry = TcpListener::bind(("127.0.0.1", args.base_port)).await?;
    let entry_addr = entry.local_addr()?;
    tokio::spawn(balance(entry, clients));

    let describe = Describe {
        admin_token: shared.admin_token.clone(),
        apps: vec![shared.app_description()],
        global_masters: vec![DescribedGlobalMaster {
            id: "embedded".into(),
            pid: std::process::id(),
            raft: Some(global_addr.to_string()),
            http: None,
            argv: std::env::args().collect(),
        }],
        regions: vec![DescribedRegion {
            name: region.clone(),
            entry: entry_addr.to_string(),
            nodes: nodes.iter().map(|n| n.described.clone()).collect(),
        }],
    };
    if let Some(path) = &args.describe {
        crate::describe::write(path, &describe)?;
    }
    print_summary(&describe, &root);

    shutdown.await;
    info!("stopping the region");
    stop(nodes).await;
    global.shutdown().await;
    Ok(())
}

/// The region's control plane: a one-member global master in this process, served to
/// the nodes over mutual TLS under the dev CA, so an app created through any node's
/// admin API works on every node.
async fn start_global_master(
    root: &Path,
    shared: &Shared,
) -> anyhow::Result<(Embedded, SocketAddr)> {
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
    Ok((global, addr))
}

/// What every node of the dev region shares: CA, admin token, cluster secret, app.
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

struct NodeSpec<'a> {
    index: usize,
    region: &'a str,
    client_port: u16,
    seed: Option<SocketAddr>,
}

async fn start_node(
    root: &Path,
    shared: &Shared,
    spec: &NodeSpec<'_>,
    global: SocketAddr,
    failure_timeout_ms: u64,
) -> anyhow::Result<Started> {
    let id = format!("{}-{}", spec.region, spec.index);
    let dir = root.join(&id);
    std::fs::create_dir_all(&dir)?;
    let files = tls::issue(&shared.ca_dir, &id, &dir)?;
    let config = node_config(shared, spec, &id, &dir, &files, global, failure_timeout_ms);
    let config_path = dir.join("config.toml");
    atomic_write(&config_path, config.as_bytes())?;

    let describe = dir.join("describe.json");
    let _ = std::fs::remove_file(&describe);
    let exe = std::env::current_exe()?;
    let argv: Vec<String> = vec![
        exe.display().to_string(),
        "--config".into(),
        config_path.display().to_string(),
        "--describe".into(),
        describe.display().to_string(),
    ];
    let log = std::fs::File::create(dir.join("node.log"))?;
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("STARLING_EXIT_WITH_PARENT", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {id}"))?;

    let mut described = wait_described(&describe)
        .await
        .with_context(|| format!("{id} did not start; see {}", dir.join("node.log").display()))?;
    described.argv = argv;
    info!(node.id = %id, client = %described.client, "node started");
    Ok(Started { child, described })
}

fn node_config(
    shared: &Shared,
    spec: &NodeSpec<'_>,
    id: &str,
    dir: &Path,
    files: &tls::TlsFiles,
    global: SocketAddr,
    failure_timeout_ms: u64,
) -> String {
    let seeds = spec.seed.map(|s| format!("\"{s}\"")).unwrap_or_default();
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
members = ["{global}"]

[[apps]]
id = "{app}"

[[apps.keys]]
id = "{key_id}"
secret = "{key_secret}"
capability = '{capability}'
"#,
        region = spec.region,
        data = dir.join("data").display(),
        secret = shared.cluster_secret,
        port = spec.client_port,
        ca = files.ca_cert.display(),
        cert = files.cert.display(),
        key_file = files.key.display(),
        token = shared.admin_token,
        app = shared.app.id,
        key_id = key.id,
        key_secret = key.secret,
        capability = key.capability,
    )
}

async fn wait_described(path: &Path) -> anyhow::Result<DescribedNode> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            let describe: serde_json::Value = serde_json::from_slice(&bytes)?;
            let node = describe["regions"][0]["nodes"][0].clone();
            return Ok(serde_json::from_value(node)?);
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

async fn wait_healthy(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while !healthy(addr).await {
        if tokio::time::Instant::now() > deadline {
            bail!("node at {addr} did not become healthy in {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Asks a node's `/health` with a bare HTTP/1.0 request: the balancer needs no more.
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

/// The region's entry: accepts client connections and splices each to a healthy
/// node, round robin.
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
    let region = &describe.regions[0];
    let key = &describe.apps[0].keys[0].key;
    println!(
        "Starling dev region {} with {} nodes (data in {})",
        region.name,
        region.nodes.len(),
        root.display()
    );
    println!("entry (connect clients here): {}", region.entry);
    for node in &region.nodes {
        println!(
            "  {}: client {} mesh {}",
            node.id,
            node.client,
            node.mesh.as_deref().unwrap_or("-")
        );
    }
    println!("API key: {key}");
    println!("admin token: {}", describe.admin_token);
    println!("Ctrl-C stops every node.");
}

async fn stop(nodes: Vec<Started>) {
    for mut node in nodes {
        if let Some(pid) = node.child.id() {
            // SIGTERM lets the node leave the mesh on purpose.
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), node.child.wait())
            .await
            .is_err()
        {
            let _ = node.child.kill().await;
        }
    }
}
