//! Starting the compared servers on loopback, and what the generator reads of them
//! (CPU time and resident memory from /proc). Every server is a child process, killed
//! with SIGKILL when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::wire::{Endpoint, Proto};

const STARTUP: Duration = Duration::from_secs(60);

/// Which server a workload runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Starling,
    Nats,
    Bare,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Starling => "starling",
            Kind::Nats => "nats",
            Kind::Bare => "bare",
        }
    }
}

/// How to start the servers.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerOpts {
    /// The region-node binary (default: the one beside this binary).
    #[arg(long, global = true)]
    pub region_node: Option<PathBuf>,
    /// The nats-server binary.
    #[arg(long, global = true, default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// Worker threads of the server under test (`node.worker_threads` for region-node,
    /// TOKIO_WORKER_THREADS for the bare server, GOMAXPROCS for nats-server); default:
    /// one per core.
    #[arg(long, global = true)]
    pub server_threads: Option<usize>,
    /// Ably wire format for Starling clients.
    #[arg(long, global = true, default_value = "msgpack")]
    pub format: AblyFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AblyFormat {
    Msgpack,
    Json,
}

impl ServerOpts {
    pub fn region_node(&self) -> PathBuf {
        self.region_node
            .clone()
            .unwrap_or_else(|| beside_me("region-node"))
    }

    pub fn msgpack(&self) -> bool {
        self.format == AblyFormat::Msgpack
    }

    pub async fn start(&self, kind: Kind) -> anyhow::Result<Server> {
        match kind {
            Kind::Starling => start_starling(self).await,
            Kind::Nats => start_nats(self).await,
            Kind::Bare => start_bare(self).await,
        }
    }
}

fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Limits of a node raised so that they measure the node and not its abuse guards:
/// the publisher sends far more than 50 publishes/s, and the idle and channels
/// workloads hold more connections and channels than the defaults allow.
pub fn starling_env(opts: &ServerOpts) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("STARLING_LIMITS__MAX_INBOUND_RATE", "10000000"),
        ("STARLING_LIMITS__MAX_INBOUND_BURST", "10000000"),
        ("STARLING_LIMITS__MAX_CONNECTIONS", "30000"),
        ("STARLING_LIMITS__MAX_CHANNELS_PER_CONNECTION", "100000"),
        ("STARLING_LOG__LEVEL", "warn"),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let Some(threads) = opts.server_threads {
        env.push(("STARLING_NODE__WORKER_THREADS".into(), threads.to_string()));
    }
    env
}

/// One running server: its processes and where clients connect.
pub struct Server {
    pub kind: Kind,
    pub endpoint: Endpoint,
    /// The processes that do the serving (for CPU and memory).
    pub pids: Vec<u32>,
    child: Child,
    /// Kept for the lifetime of the server; removed on drop.
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// CPU seconds (user + system) its processes used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids.iter().map(|&pid| proc_cpu_seconds(pid)).sum()
    }

    /// Resident bytes of its processes.
    pub fn rss_bytes(&self) -> u64 {
        self.pids.iter().map(|&pid| proc_rss_bytes(pid)).sum()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Describe {
    pub apps: Vec<DescribedApp>,
    pub regions: Vec<DescribedRegion>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DescribedApp {
    pub keys: Vec<DescribedKey>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DescribedKey {
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DescribedRegion {
    pub name: String,
    pub nodes: Vec<DescribedNode>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DescribedNode {
    pub id: String,
    pub pid: u32,
    pub client: SocketAddr,
}

impl Describe {
    pub fn key(&self) -> anyhow::Result<String> {
        let key = self.apps.first().and_then(|a| a.keys.first());
        Ok(key.context("describe file lists no key")?.key.clone())
    }
}

fn temp_dir(prefix: &str) -> anyhow::Result<TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir()?)
}

fn log_to(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    Ok(std::fs::File::create(dir.join(name))?)
}

async fn start_starling(opts: &ServerOpts) -> anyhow::Result<Server> {
    let dir = temp_dir("starling-bench-node-")?;
    let describe_path = dir.path().join("describe.json");
    let mut command = Command::new(opts.region_node());
    command
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--describe")
        .arg(&describe_path)
        .envs(starling_env(opts));
    let mut child = spawn(command, dir.path())?;
    let describe = wait_for_describe(&mut child, &describe_path, dir.path()).await?;

    let node = &describe.regions[0].nodes[0];
    let endpoint = Endpoint {
        addr: node.client,
        proto: Proto::Ably {
            key: describe.key()?,
            msgpack: opts.msgpack(),
        },
    };
    Ok(Server {
        kind: Kind::Starling,
        endpoint,
        pids: vec![child.id()],
        child,
        _dir: dir,
    })
}

fn spawn(mut command: Command, dir: &Path) -> anyhow::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(log_to(dir, "stdout.log")?)
        .stderr(log_to(dir, "stderr.log")?);
    command
        .spawn()
        .with_context(|| format!("spawning {:?}", command.get_program()))
}

pub async fn wait_for_describe(
    child: &mut Child,
    path: &Path,
    dir: &Path,
) -> anyhow::Result<Describe> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            bail!("server exited with {status} before it was ready; log:\n{log}");
        }
        if let Ok(bytes) = std::fs::read(path) {
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()));
        }
        if Instant::now() >= deadline {
            bail!("no describe file at {} after {STARTUP:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port (bound, read, released).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_nats(opts: &ServerOpts) -> anyhow::Result<Server> {
    let dir = temp_dir("starling-bench-nats-")?;
    let (port, ws_port) = (free_port()?, free_port()?);
    let config = format!(
        "host: 127.0.0.1\nport: {port}\nmax_payload: 1048576\n\
         websocket {{\n  host: 127.0.0.1\n  port: {ws_port}\n  no_tls: true\n}}\n"
    );
    let config_path = dir.path().join("nats.conf");
    std::fs::write(&config_path, config)?;

    let mut command = Command::new(&opts.nats_server);
    command.arg("-c").arg(&config_path);
    if let Some(threads) = opts.server_threads {
        command.env("GOMAXPROCS", threads.to_string());
    }
    let mut child = spawn(command, dir.path())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], ws_port));
    wait_for_port(&mut child, addr, dir.path()).await?;
    Ok(Server {
        kind: Kind::Nats,
        endpoint: Endpoint {
            addr,
            proto: Proto::Nats,
        },
        pids: vec![child.id()],
        child,
        _dir: dir,
    })
}

async fn wait_for_port(child: &mut Child, addr: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            bail!("server exited with {status}; log:\n{log}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listening on {addr} after {STARTUP:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bare server runs as this binary's `bare` subcommand in its own process, so its
/// CPU and memory are measured like the others'.
async fn start_bare(opts: &ServerOpts) -> anyhow::Result<Server> {
    let dir = temp_dir("starling-bench-bare-")?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command.arg("bare").arg("--listen").arg(addr.to_string());
    if let Some(threads) = opts.server_threads {
        command.env("TOKIO_WORKER_THREADS", threads.to_string());
    }
    let mut child = spawn(command, dir.path())?;
    wait_for_port(&mut child, addr, dir.path()).await?;
    Ok(Server {
        kind: Kind::Bare,
        endpoint: Endpoint {
            addr,
            proto: Proto::Bare,
        },
        pids: vec![child.id()],
        child,
        _dir: dir,
    })
}

/// A `region-node dev` launcher: regions of nodes on loopback.
pub struct Region {
    pub describe: Describe,
    child: Child,
    _dir: TempDir,
}

impl Region {
    pub async fn start(opts: &ServerOpts, regions: &str, nodes: usize) -> anyhow::Result<Region> {
        let dir = temp_dir("starling-bench-dev-")?;
        let describe_path = dir.path().join("describe.json");
        let mut command = Command::new(opts.region_node());
        command
            .arg("dev")
            .arg("--regions")
            .arg(regions)
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--describe")
            .arg(&describe_path)
            // One global master inside the launcher: no global-master binary needed.
            .arg("--global-masters")
            .arg("1")
            .envs(starling_env(opts));
        let mut child = spawn(command, dir.path())?;
        let describe = match wait_for_describe(&mut child, &describe_path, dir.path()).await {
            Ok(describe) => describe,
            Err(error) => {
                let _ = child.kill();
                let kept = dir.keep();
                return Err(error.context(format!("region logs kept in {}", kept.display())));
            }
        };
        Ok(Region {
            describe,
            child,
            _dir: dir,
        })
    }

    pub fn endpoint(&self, node: &DescribedNode, msgpack: bool) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            addr: node.client,
            proto: Proto::Ably {
                key: self.describe.key()?,
                msgpack,
            },
        })
    }

    pub fn nodes(&self) -> impl Iterator<Item = &DescribedNode> {
        self.describe.regions.iter().flat_map(|r| r.nodes.iter())
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.nodes().map(|n| proc_cpu_seconds(n.pid)).sum()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // The nodes stop with their launcher; SIGKILL them too so none outlives a
        // killed benchmark.
        for node in self.nodes() {
            kill(node.pid);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn kill(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in seconds (0 once it is gone).
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces; fields are counted after its closing paren.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
    (field(11) + field(12)) / clock_ticks()
}

/// VmRSS of a process, in bytes.
pub fn proc_rss_bytes(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds this process (the generator) used so far.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
