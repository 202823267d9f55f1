//! A real `region-node` process on loopback, owned by one test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::STARTUP;

/// How often the harness looks for the describe file while a node starts.
const POLL: Duration = Duration::from_millis(20);

/// Set to keep a test's node directory (logs, data, describe file) after the test.
const KEEP_ENV: &str = "STARLING_TEST_KEEP";

/// The describe file a node writes once it is ready (design.md, "The describe file").
#[derive(Debug, Clone, Deserialize)]
pub struct Describe {
    pub admin_token: String,
    pub apps: Vec<DescribedApp>,
    pub regions: Vec<DescribedRegion>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DescribedApp {
    pub id: String,
    pub keys: Vec<DescribedKey>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DescribedKey {
    pub key: String,
    pub capability: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DescribedRegion {
    pub name: String,
    pub entry: String,
    pub nodes: Vec<DescribedNode>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DescribedNode {
    pub id: String,
    pub pid: u32,
    pub client: String,
    /// The client TLS listener, when the node has one.
    #[serde(default)]
    pub client_tls: Option<String>,
}

/// Extra command-line arguments, environment variables and configuration for a node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// TOML written to `config.toml` in the node's directory and passed as `--config`.
    pub config: Option<String>,
}

impl NodeOptions {
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn config(mut self, toml: impl Into<String>) -> Self {
        self.config = Some(toml.into());
        self
    }
}

/// A running node. Dropping it kills the process (SIGKILL) and removes its directory.
pub struct Node {
    /// Locked only for `try_wait`/`kill`, so `&Node` can check liveness.
    child: Mutex<Child>,
    describe: Describe,
    options: NodeOptions,
    /// Holds the data dir, the describe file and the logs; `None` once kept on request.
    dir: Option<TempDir>,
    root: PathBuf,
}

impl Node {
    /// Starts a node with no configuration file: the no-argument default, on port 0.
    pub async fn start() -> anyhow::Result<Node> {
        Node::start_with(NodeOptions::default()).await
    }

    pub async fn start_with(options: NodeOptions) -> anyhow::Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("starling-test-")
            .tempdir()
            .context("creating the node's directory")?;
        let root = dir.path().to_owned();
        if let Some(toml) = &options.config {
            std::fs::write(root.join("config.toml"), toml).context("writing config.toml")?;
        }

        let (child, describe) = launch(&root, &options).await?;
        Ok(Node {
            child: Mutex::new(child),
            describe,
            options,
            dir: Some(dir),
            root,
        })
    }

    /// Kills the node and starts it again on the same data directory. The client
    /// address changes (port 0 again); read it from [`Node::addr`] afterwards.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let (child, describe) = launch(&self.root, &self.options).await?;
        *self.child.get_mut().unwrap_or_else(|e| e.into_inner()) = child;
        self.describe = describe;
        Ok(())
    }

    /// Where clients connect (WebSocket and REST).
    pub fn addr(&self) -> SocketAddr {
        let node = &self.describe.regions[0].nodes[0];
        node.client
            .parse()
            .unwrap_or_else(|_| panic!("describe file has a bad client address {node:?}"))
    }

    /// Where clients connect over TLS (wss and https); fails for a node without a
    /// client TLS listener.
    pub fn tls_addr(&self) -> anyhow::Result<SocketAddr> {
        let node = &self.describe.regions[0].nodes[0];
        let addr = node
            .client_tls
            .as_deref()
            .with_context(|| format!("node has no client TLS listener: {node:?}"))?;
        addr.parse()
            .with_context(|| format!("describe file has a bad TLS address {addr:?}"))
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.describe.regions[0].nodes[0].pid
    }

    /// The node's resident memory (`VmRSS` in `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .context("reading the node's /proc status")?;
        let line = (status.lines())
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS line")?;
        let kib = line.split_whitespace().nth(1).context("VmRSS value")?;
        kib.parse().context("VmRSS in KiB")
    }

    /// CPU time the node's process has used so far (user and system), from
    /// `/proc/<pid>/stat` in clock ticks of 10 ms.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .context("reading the node's /proc stat")?;
        // Fields after the command name, which is in parentheses and may hold spaces:
        // utime and stime are the 14th and 15th of the whole line.
        let rest = stat.rsplit_once(')').context("no command name")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            let field = fields.get(i).context("short /proc stat")?;
            field.parse().context("clock ticks")
        };
        let total = ticks(11)? + ticks(12)?;
        Ok(Duration::from_millis(total * 10))
    }

    /// The first key of the first app, `appId.keyId:secret`.
    pub fn key(&self) -> &str {
        &self.describe.apps[0].keys[0].key
    }

    pub fn app_id(&self) -> &str {
        &self.describe.apps[0].id
    }

    pub fn admin_token(&self) -> &str {
        &self.describe.admin_token
    }

    pub fn describe(&self) -> &Describe {
        &self.describe
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Everything the node wrote to standard error (its log), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("stderr.log")).unwrap_or_default()
    }

    /// Fails if the process has exited.
    pub fn assert_running(&self) -> anyhow::Result<()> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.try_wait().context("checking the node process")? {
            None => Ok(()),
            Some(status) => bail!("node exited with {status}; log:\n{}", self.log()),
        }
    }

    fn kill(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        // SIGKILL; an already exited child makes this an error worth ignoring.
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- node log ({}) ---\n{}", self.root.display(), self.log());
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping node directory {}", dir.keep().display());
            }
        }
    }
}

/// The `region-node` binary under test: `STARLING_BIN`, or the workspace's debug build.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STARLING_BIN") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/region-node");
    assert!(
        path.exists(),
        "{} not found: build it first: cargo build --workspace",
        path.display()
    );
    path
}

/// Runs the binary with `args` until it exits, killing it if it outlives `timeout`.
/// For tests of startup failures.
pub async fn run_to_exit(args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(binary());
    command
        .args(args)
        .env_remove("STARLING_BIN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .with_context(|| format!("region-node {args:?} still running after {timeout:?}"))?
        .context("running region-node")?;
    Ok(output)
}

/// Spawns the node in `root` and waits until it has written its describe file.
async fn launch(root: &Path, options: &NodeOptions) -> anyhow::Result<(Child, Describe)> {
    let describe_path = root.join("describe.json");
    // A restart must not mistake the previous run's file for readiness.
    let _ = std::fs::remove_file(&describe_path);

    let mut command = Command::new(binary());
    command
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(root.join("data"))
        .arg("--describe")
        .arg(&describe_path);
    if options.config.is_some() {
        command.arg("--config").arg(root.join("config.toml"));
    }
    command
        .args(&options.args)
        .env_remove("STARLING_BIN")
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log_file(root, "stdout.log")?)
        .stderr(log_file(root, "stderr.log")?);
    let mut child = command
        .spawn()
        .with_context(|| format!("spawning {}", binary().display()))?;

    match wait_for_describe(&mut child, &describe_path).await {
        Ok(describe) => Ok((child, describe)),
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(root.join("stderr.log")).unwrap_or_default();
            Err(error.context(format!("starting region-node; log:\n{log}")))
        }
    }
}

fn log_file(root: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join(name))
        .with_context(|| format!("opening {name}"))
}

async fn wait_for_describe(child: &mut Child, path: &Path) -> anyhow::Result<Describe> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("region-node exited with {status} before writing its describe file");
        }
        // The node writes the file atomically, so a readable file is a complete one.
        if let Ok(bytes) = std::fs::read(path) {
            let describe: Describe = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?;
            check_describe(&describe, child.id())?;
            return Ok(describe);
        }
        if Instant::now() >= deadline {
            bail!("no describe file at {} after {STARTUP:?}", path.display());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn check_describe(describe: &Describe, pid: u32) -> anyhow::Result<()> {
    let node = describe
        .regions
        .first()
        .and_then(|r| r.nodes.first())
        .context("describe file lists no node")?;
    if node.pid != pid {
        bail!("describe file names pid {}, spawned {pid}", node.pid);
    }
    let key = describe
        .apps
        .first()
        .and_then(|a| a.keys.first())
        .context("describe file lists no app key")?;
    if !key.key.contains(':') {
        bail!("describe file key {:?} is not name:secret", key.key);
    }
    Ok(())
}
