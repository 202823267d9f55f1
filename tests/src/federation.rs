//! `region-node dev` from a test: start it, read its describe file, and kill every
//! process it started when the test ends, however it ends.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::StatusCode;
use serde::Deserialize;
use tempfile::TempDir;

use crate::node::binary;
use crate::rest;

/// From spawn to the describe file: three members elect a leader and four nodes
/// start one after another, on a busy machine.
pub const START: Duration = Duration::from_secs(90);
/// How long every node and member may take to answer `/health` with 200.
pub const HEALTHY: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// The parts of the describe file this test reads.
#[derive(Debug, Deserialize)]
pub struct Described {
    pub admin_token: String,
    pub apps: Vec<crate::node::DescribedApp>,
    pub global_masters: Vec<Member>,
    pub regions: Vec<Region>,
}

#[derive(Debug, Deserialize)]
pub struct Member {
    pub id: String,
    pub pid: u32,
    pub raft: Option<String>,
    pub http: Option<String>,
    pub argv: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Region {
    pub name: String,
    pub entry: String,
    pub nodes: Vec<RegionNode>,
}

#[derive(Debug, Deserialize)]
pub struct RegionNode {
    pub id: String,
    pub pid: u32,
    pub client: String,
    /// Where other regions' nodes reach this one: the launcher gives every node of a
    /// federation a bridge listener.
    pub bridge: Option<String>,
    pub argv: Vec<String>,
}

impl Described {
    pub fn pids(&self) -> Vec<u32> {
        let members = self.global_masters.iter().map(|m| m.pid);
        let nodes = self
            .regions
            .iter()
            .flat_map(|r| r.nodes.iter().map(|n| n.pid));
        members.chain(nodes).collect()
    }

    pub fn region(&self, name: &str) -> Result<&Region> {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .with_context(|| format!("no region {name} in {:?}", self.regions))
    }
}

/// A running `region-node dev`. Dropping it SIGKILLs the launcher and every process
/// it described, and removes the launcher's data folder.
pub struct Launcher {
    pub child: Child,
    /// Holds the describe file and the launcher's log.
    pub dir: TempDir,
    /// Learned from the describe file, so they are killed even if the launcher is not
    /// there to stop them.
    pub pids: Vec<u32>,
    pub data: Option<PathBuf>,
}

impl Launcher {
    pub fn start(args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("starling-federation-")
            .tempdir()?;
        let log = std::fs::File::create(dir.path().join("launcher.log"))?;
        let child = Command::new(binary())
            .arg("dev")
            .args(args)
            .arg("--describe")
            .arg(dir.path().join("describe.json"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting region-node dev")?;
        Ok(Self {
            child,
            dir,
            pids: Vec::new(),
            data: None,
        })
    }

    /// Waits for the describe file, which the launcher writes once every process is
    /// ready, failing early if the launcher exits.
    pub async fn described(&mut self) -> Result<Described> {
        let path = self.dir.path().join("describe.json");
        let deadline = Instant::now() + START;
        loop {
            if let Ok(bytes) = std::fs::read(&path) {
                let described: Described = serde_json::from_slice(&bytes)
                    .with_context(|| String::from_utf8_lossy(&bytes).into_owned())?;
                self.pids = described.pids();
                self.data = data_dir(&described);
                return Ok(described);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("region-node dev exited ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("no describe file after {START:?}:\n{}", self.log());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Passes a scenario's result on, printing the launcher's log when it failed.
    pub fn explain(&self, result: Result<()>) -> Result<()> {
        if result.is_err() {
            eprintln!("--- launcher log ---\n{}", self.log());
        }
        result
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("launcher.log")).unwrap_or_default()
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in &self.pids {
            if alive(*pid) {
                signal("-KILL", *pid);
            }
        }
        if let Some(data) = &self.data {
            if std::env::var_os("STARLING_TEST_KEEP").is_some() {
                eprintln!("keeping the launcher's data folder {}", data.display());
            } else {
                let _ = std::fs::remove_dir_all(data);
            }
        }
    }
}

/// The launcher's data folder: a node's configuration sits in `<data>/<id>/`.
pub fn data_dir(described: &Described) -> Option<PathBuf> {
    let node = described.regions.first()?.nodes.first()?;
    let config = node.argv.iter().skip_while(|a| *a != "--config").nth(1)?;
    Some(PathBuf::from(config).parent()?.parent()?.to_owned())
}

/// Whether `pid` runs. A zombie (exited, not yet reaped: the launcher's children are
/// reparented when it goes) counts as gone.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may hold spaces.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    !matches!(state, Some(Some('Z' | 'X')))
}

pub fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([name, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Polls `GET http://<addr>/health` until it answers 200.
pub async fn wait_healthy(what: &str, addr: &str) -> Result<()> {
    let http = rest::http();
    let deadline = Instant::now() + HEALTHY;
    loop {
        let answer = http.get(format!("http://{addr}/health")).send().await;
        let last = match answer {
            Ok(r) if r.status() == StatusCode::OK => return Ok(()),
            Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(error) => error.to_string(),
        };
        if Instant::now() > deadline {
            bail!("{what} at {addr} not healthy after {HEALTHY:?}: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}
