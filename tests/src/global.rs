//! A global master group of real `global-master` processes on loopback, for tests of
//! region nodes that keep their control plane there. Certificates come from
//! `region-node ca`, so nodes and members share one cluster CA, as in production.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use starling_global::api::{Answer, Consistency, Query, ReadRequest};
use starling_global::state::Catalog;
use starling_proto::tls::TlsFiles;
use tempfile::TempDir;

use crate::node::binary;
use crate::STARTUP;

/// Raft timers short enough for a quick election, long enough for a loaded machine.
const TIMERS: &str = "heartbeat_ms = 100\nelection_timeout_min_ms = 600\n\
                      election_timeout_max_ms = 1200\nrequest_timeout_ms = 3000\n";

const POLL: Duration = Duration::from_millis(50);

/// A running group; dropping it kills every member (SIGKILL).
pub struct GlobalGroup {
    dir: TempDir,
    raft: Vec<SocketAddr>,
    http: Vec<SocketAddr>,
    procs: Vec<Option<Child>>,
}

impl GlobalGroup {
    /// Starts `n` members and waits until one of them leads.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("starling-gm-").tempdir()?;
        run_ca(&["create", "--dir"], dir.path(), None)?;
        let ports = free_ports(2 * n)?;
        let raft: Vec<SocketAddr> = (0..n).map(|i| loopback(ports[2 * i])).collect();
        let http: Vec<SocketAddr> = (0..n).map(|i| loopback(ports[2 * i + 1])).collect();

        let mut group = Self {
            dir,
            raft,
            http,
            procs: (0..n).map(|_| None).collect(),
        };
        for id in 1..=n {
            group.write_config(id)?;
            group.spawn(id)?;
        }
        group.wait_ready().await?;
        Ok(group)
    }

    /// The members' raft addresses, as `[global] members` takes them.
    pub fn members(&self) -> Vec<String> {
        self.raft.iter().map(ToString::to_string).collect()
    }

    /// The members' HTTP addresses (`/health`, `/metrics`), in member id order.
    pub fn http_addrs(&self) -> Vec<String> {
        self.http.iter().map(ToString::to_string).collect()
    }

    /// Issues a certificate under the group's CA and returns the `[tls]` section.
    pub fn tls_section(&self, name: &str) -> anyhow::Result<String> {
        run_ca(&["issue", "--dir"], self.dir.path(), Some(name))?;
        let path = |file: String| self.dir.path().join(file);
        Ok(format!(
            "[tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n",
            path("ca.pem".into()),
            path(format!("{name}.pem")),
            path(format!("{name}.key")),
        ))
    }

    /// The `[global]` and `[tls]` configuration of a region node using this group.
    pub fn node_config(&self, node_name: &str) -> anyhow::Result<String> {
        let members: Vec<String> = self.members().iter().map(|m| format!("{m:?}")).collect();
        Ok(format!(
            "[global]\nmembers = [{}]\nrequest_timeout_ms = 3000\nheartbeat_ms = 200\n\n{}",
            members.join(", "),
            self.tls_section(node_name)?
        ))
    }

    /// The catalog as the leader holds it, read as an operator would.
    pub async fn catalog(&self) -> anyhow::Result<Catalog> {
        self.tls_section("operator")?;
        let path = |file: &str| self.dir.path().join(file);
        let operator = TlsFiles {
            ca_cert: path("ca.pem"),
            cert: path("operator.pem"),
            key: path("operator.key"),
        };
        let mut client = starling_global::client::Client::new(self.members(), &operator)?;
        let request = ReadRequest {
            query: Query::Catalog,
            consistency: Consistency::Linearizable,
        };
        let reply = client.read(&request, Duration::from_secs(10)).await?;
        match reply.answer {
            Answer::Catalog(catalog) => Ok(catalog),
            other => bail!("asked for the catalog, got {other:?}"),
        }
    }

    /// Runs an operator subcommand of `global-master` (`move-home`, `state`, ...) with
    /// an operator certificate against the group; its standard output on success.
    pub async fn operator(&self, args: &[&str]) -> anyhow::Result<String> {
        self.tls_section("operator")?;
        let path = |file: &str| self.dir.path().join(file);
        let output = tokio::process::Command::new(global_master_binary())
            .args(args)
            .arg("--addr")
            .arg(self.members().join(","))
            .arg("--ca")
            .arg(path("ca.pem"))
            .arg("--cert")
            .arg(path("operator.pem"))
            .arg("--key")
            .arg(path("operator.key"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await
            .context("running global-master")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "global-master {args:?} failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout)
    }

    /// SIGKILLs member `id` (1-based).
    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.procs[id - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The member's log, for failure messages.
    pub fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.file(id, "log")).unwrap_or_default()
    }

    fn file(&self, id: usize, ext: &str) -> PathBuf {
        self.dir.path().join(format!("gm-{id}.{ext}"))
    }

    fn write_config(&self, id: usize) -> anyhow::Result<()> {
        run_ca(
            &["issue", "--dir"],
            self.dir.path(),
            Some(&format!("gm-{id}")),
        )?;
        let list: Vec<String> = (0..self.raft.len())
            .map(|i| {
                format!(
                    "  {{ id = {}, raft_addr = \"{}\", http_addr = \"{}\" }},",
                    i + 1,
                    self.raft[i],
                    self.http[i]
                )
            })
            .collect();
        let config = format!(
            "[member]\nid = {id}\ndata_dir = {data:?}\n\n[listen]\nraft = \"{raft}\"\n\
             http = \"{http}\"\n\n[cluster]\nmembers = [\n{list}\n]\n{TIMERS}\n{tls}",
            data = self.dir.path().join(format!("data-{id}")),
            raft = self.raft[id - 1],
            http = self.http[id - 1],
            list = list.join("\n"),
            tls = self.tls_section(&format!("gm-{id}"))?,
        );
        std::fs::write(self.file(id, "toml"), config)?;
        Ok(())
    }

    fn spawn(&mut self, id: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file(id, "log"))?;
        let child = Command::new(global_master_binary())
            .arg("--config")
            .arg(self.file(id, "toml"))
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting global-master")?;
        self.procs[id - 1] = Some(child);
        Ok(())
    }

    /// Waits until some member's `/health` says ready (a leader is known).
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let http = crate::rest::http();
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            for addr in &self.http {
                let answer = http.get(format!("http://{addr}/health")).send().await;
                if answer.is_ok_and(|r| r.status().is_success()) {
                    return Ok(());
                }
            }
            tokio::time::sleep(POLL).await;
        }
        bail!(
            "no global master member became ready; log of member 1:\n{}",
            self.log(1)
        )
    }
}

impl Drop for GlobalGroup {
    fn drop(&mut self) {
        for id in 1..=self.procs.len() {
            self.kill(id);
        }
        if std::thread::panicking() {
            for id in 1..=self.procs.len() {
                eprintln!("--- global master {id} log ---\n{}", self.log(id));
            }
        }
    }
}

/// The `global-master` binary next to the `region-node` under test.
pub fn global_master_binary() -> PathBuf {
    let path = binary().with_file_name("global-master");
    assert!(
        path.exists(),
        "{} not found: build it first: cargo build --workspace",
        path.display()
    );
    path
}

/// `region-node ca <verb> --dir DIR [--name NAME]`: one CA for members and nodes.
fn run_ca(verb: &[&str], dir: &Path, name: Option<&str>) -> anyhow::Result<()> {
    if name.is_some_and(|n| dir.join(format!("{n}.pem")).exists()) {
        return Ok(());
    }
    let mut command = Command::new(binary());
    command.arg("ca").args(verb).arg(dir);
    if let Some(name) = name {
        command.arg("--name").arg(name);
    }
    let output = command.output().context("running region-node ca")?;
    if !output.status.success() {
        bail!(
            "region-node ca {verb:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Ports free right now, bound together so they differ.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}
