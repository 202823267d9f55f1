//! A region of real nodes started by `region-node dev`, for tests that need several
//! nodes of one region: their addresses, their logs, and SIGKILL of one of them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::node::binary;
use crate::WAIT;

/// From spawn to the describe file: the launcher starts its nodes one after another.
const START: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Deserialize)]
struct Described {
    apps: Vec<crate::node::DescribedApp>,
    regions: Vec<DescribedRegion>,
}

#[derive(Debug, Clone, Deserialize)]
struct DescribedRegion {
    nodes: Vec<DevNode>,
}

/// One node the launcher started.
#[derive(Debug, Clone, Deserialize)]
pub struct DevNode {
    pub id: String,
    pub pid: u32,
    pub client: String,
    argv: Vec<String>,
}

impl DevNode {
    /// `http://<client><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.client)
    }

    /// The node's log (standard error), written by the launcher next to its config.
    pub fn log(&self) -> String {
        let config = self.argv.iter().skip_while(|a| *a != "--config").nth(1);
        config
            .and_then(|c| PathBuf::from(c).parent().map(|d| d.join("node.log")))
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }
}

/// A running `region-node dev` with one region. Dropping it kills the launcher (its
/// nodes exit with it) and every node it described.
pub struct DevRegion {
    launcher: Child,
    dir: TempDir,
    nodes: Vec<DevNode>,
    key: String,
}

impl DevRegion {
    /// Starts `nodes` nodes in one region, with `RUST_LOG` set to `log`, and waits
    /// until each sees all the others on its mesh.
    pub async fn start(nodes: usize, log: &str) -> anyhow::Result<DevRegion> {
        let dir = tempfile::Builder::new().prefix("starling-dev-").tempdir()?;
        let output = std::fs::File::create(dir.path().join("launcher.log"))?;
        let launcher = Command::new(binary())
            .args([
                "dev",
                "--nodes",
                &nodes.to_string(),
                "--failure-timeout-ms",
                "1000",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--describe")
            .arg(dir.path().join("describe.json"))
            .env("RUST_LOG", log)
            .env_remove("STARLING_BIN")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .context("starting region-node dev")?;
        let mut region = DevRegion {
            launcher,
            dir,
            nodes: Vec::new(),
            key: String::new(),
        };
        let described = region.described().await?;
        region.key = described.apps[0].keys[0].key.clone();
        region.nodes = described.regions[0].nodes.clone();
        region.wait_meshed(nodes).await?;
        Ok(region)
    }

    async fn described(&mut self) -> anyhow::Result<Described> {
        let path = self.dir.path().join("describe.json");
        let deadline = Instant::now() + START;
        loop {
            if let Ok(bytes) = std::fs::read(&path) {
                return serde_json::from_slice(&bytes).context("parsing the describe file");
            }
            if let Some(status) = self.launcher.try_wait()? {
                bail!(
                    "region-node dev exited ({status}):\n{}",
                    self.launcher_log()
                );
            }
            if Instant::now() > deadline {
                bail!("no describe file after {START:?}:\n{}", self.launcher_log());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every node's `/health` reports `live` mesh members.
    pub async fn wait_meshed(&self, live: usize) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        for node in &self.nodes {
            loop {
                let health = http.get(node.url("/health")).send().await;
                let body: serde_json::Value = match health {
                    Ok(response) => response.json().await.unwrap_or_default(),
                    Err(_) => serde_json::Value::Null,
                };
                if body["mesh"]["live"] == live {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} does not see {live} live nodes: {body}", node.id);
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    pub fn nodes(&self) -> &[DevNode] {
        &self.nodes
    }

    /// The first key of the first app, `appId.keyId:secret`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// SIGKILLs the node and forgets it; the others notice through their mesh.
    pub fn kill(&mut self, id: &str) -> anyhow::Result<DevNode> {
        let index = (self.nodes.iter().position(|n| n.id == id))
            .with_context(|| format!("no node {id}"))?;
        let node = self.nodes.remove(index);
        kill(node.pid);
        Ok(node)
    }

    fn launcher_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("launcher.log")).unwrap_or_default()
    }
}

fn kill(pid: u32) {
    // An already exited process makes this fail, which is what we wanted anyway.
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

impl Drop for DevRegion {
    fn drop(&mut self) {
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
        for node in &self.nodes {
            kill(node.pid);
        }
        if std::thread::panicking() {
            eprintln!("--- launcher log ---\n{}", self.launcher_log());
        }
    }
}
