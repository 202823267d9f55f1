//! A harness that runs real `global-master` processes on loopback: a throwaway cluster
//! CA and certificates in a temporary directory, one configuration file per member
//! with short raft timers, and guards that kill every process when the test ends,
//! however it ends. Waits poll a condition until a deadline; nothing sleeps to
//! synchronise.

#![allow(dead_code)] // each test binary uses a different part

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use starling_global::api::{Answer, Consistency, Query, ReadRequest};
use starling_global::client::Client;
use starling_global::state::Catalog;
use starling_proto::global::StatusReply;
use starling_proto::tls::TlsFiles;
use tokio::time::Instant;

pub const BIN: &str = env!("CARGO_BIN_EXE_global-master");

/// Generous for a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Short raft timers: a failover takes about a second, yet a loaded machine does not
/// hold spurious elections.
pub const TIMERS: &str = "heartbeat_ms = 100\nelection_timeout_min_ms = 600\n\
                          election_timeout_max_ms = 1200\nrequest_timeout_ms = 3000\n";

/// Polls `check` every 50 ms until it yields a value or `deadline` passes; the panic
/// names `what` and the last reason `check` gave.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let give_up = Instant::now() + deadline;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(reason) if Instant::now() >= give_up => {
                panic!("timed out after {deadline:?} waiting for {what}: {reason}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Reserves `n` distinct free loopback ports: all are bound at once (so none repeats),
/// then released for the members to bind.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A CA in `dir` and a certificate per name, in `ca issue`'s layout.
pub fn certificates(dir: &Path, names: &[&str]) -> Vec<TlsFiles> {
    starling_global::ca::create_ca(dir).expect("creating a CA");
    names
        .iter()
        .map(|name| starling_global::ca::issue(dir, name, dir).expect("issuing"))
        .collect()
}

/// One member's files and addresses.
pub struct MemberSpec {
    pub id: u64,
    pub raft: SocketAddr,
    pub http: SocketAddr,
    pub config: PathBuf,
    pub describe: PathBuf,
    pub log: PathBuf,
}

/// A running member process, killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub argv: Vec<String>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (SIGSTOP freezes the member as a long GC pause or a hung host
    /// would; SIGCONT resumes it).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        use nix::unistd::Pid;
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal)
            .expect("sending a signal");
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self, deadline: Duration) -> ExitStatus {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("sending SIGTERM");
        wait_for("the member to exit", deadline, || {
            let exited = self.child.try_wait();
            async move {
                match exited {
                    Ok(Some(status)) => Ok(status),
                    Ok(None) => Err("still running".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the describe file says; only what the tests read.
#[derive(Debug, Deserialize)]
pub struct Describe {
    pub global_masters: Vec<Described>,
}

#[derive(Debug, Deserialize)]
pub struct Described {
    pub id: String,
    pub pid: u32,
    pub raft: String,
    pub http: String,
    pub argv: Vec<String>,
}

/// A group of members under one CA, each with a process slot. Dropping it kills every
/// process; when the test failed, it prints the end of each member's log first.
pub struct Group {
    pub dir: tempfile::TempDir,
    /// Every member, the initial voters first, then the spares.
    pub members: Vec<MemberSpec>,
    /// How many of `members` form the group at first.
    pub voters: usize,
    pub procs: Vec<Option<Proc>>,
    /// The operator's certificate, issued by the group's CA.
    pub operator: TlsFiles,
}

impl Group {
    /// Writes the configuration of `n` members (ids 1..=n) with `extra` appended to
    /// each `[cluster]` section (it may open further sections); starts nothing.
    pub fn new(n: usize, extra: &str) -> Self {
        Self::with_spares(n, 0, extra)
    }

    /// Like [`Group::new`], plus `spares` members (ids after the voters) that are not in
    /// the initial group: each spare's configuration lists the voters and itself, so it
    /// waits, as a new member does, for an operator to add it.
    pub fn with_spares(voters: usize, spares: usize, extra: &str) -> Self {
        let n = voters + spares;
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut names: Vec<String> = (1..=n).map(|i| format!("gm-{i}")).collect();
        names.push("operator".into());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut certs = certificates(dir.path(), &refs);
        let operator = certs.pop().unwrap();

        let ports = free_ports(2 * n);
        let members: Vec<MemberSpec> = (0..n)
            .map(|i| {
                let id = i as u64 + 1;
                MemberSpec {
                    id,
                    raft: SocketAddr::from(([127, 0, 0, 1], ports[2 * i])),
                    http: SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1])),
                    config: dir.path().join(format!("gm-{id}.toml")),
                    describe: dir.path().join(format!("gm-{id}.describe.json")),
                    log: dir.path().join(format!("gm-{id}.log")),
                }
            })
            .collect();
        let entry = |m: &MemberSpec| {
            format!(
                "  {{ id = {}, raft_addr = \"{}\", http_addr = \"{}\" }},",
                m.id, m.raft, m.http
            )
        };
        for (member, tls) in members.iter().zip(&certs) {
            let mut list: Vec<String> = members[..voters].iter().map(entry).collect();
            if member.id as usize > voters {
                list.push(entry(member));
            }
            let config = format!(
                "[member]\nid = {id}\ndata_dir = {data:?}\n\n[listen]\nraft = \"{raft}\"\n\
                 http = \"{http}\"\n\n[cluster]\nmembers = [\n{list}\n]\n{TIMERS}{extra}\n\n\
                 [tls]\nca_cert = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
                id = member.id,
                data = dir.path().join(format!("data-{}", member.id)),
                raft = member.raft,
                http = member.http,
                list = list.join("\n"),
                ca = tls.ca_cert,
                cert = tls.cert,
                key = tls.key,
            );
            std::fs::write(&member.config, config).unwrap();
        }
        let procs = members.iter().map(|_| None).collect();
        Self {
            dir,
            members,
            voters,
            procs,
            operator,
        }
    }

    /// The initial voters' raft addresses.
    pub fn raft_addrs(&self) -> Vec<String> {
        (self.members[..self.voters].iter())
            .map(|m| m.raft.to_string())
            .collect()
    }

    pub fn addr(&self, id: u64) -> String {
        self.spec(id).raft.to_string()
    }

    pub fn spec(&self, id: u64) -> &MemberSpec {
        &self.members[id as usize - 1]
    }

    pub fn client(&self) -> Client {
        Client::new(self.raft_addrs(), &self.operator)
            .expect("client")
            .with_attempt_timeout(Duration::from_secs(5))
    }

    /// Starts member `id` from its configuration and waits for its describe file.
    pub async fn start(&mut self, id: u64) {
        let spec = self.spec(id);
        let argv = vec![
            BIN.to_owned(),
            "--config".to_owned(),
            spec.config.display().to_string(),
            "--describe".to_owned(),
            spec.describe.display().to_string(),
        ];
        self.spawn(id, argv).await;
    }

    /// Starts member `id` with a full command line (a describe file's `argv`).
    pub async fn spawn(&mut self, id: u64, argv: Vec<String>) {
        let spec = self.spec(id);
        let describe = spec.describe.clone();
        let _ = std::fs::remove_file(&describe);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .unwrap();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("STARLING_EXIT_WITH_PARENT", "1")
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting global-master");
        let pid = child.id();
        self.procs[id as usize - 1] = Some(Proc { child, argv });

        let described = wait_for("the describe file", DEADLINE, || {
            let read = std::fs::read(&describe);
            async move {
                let bytes = read.map_err(|e| e.to_string())?;
                serde_json::from_slice::<Describe>(&bytes).map_err(|e| e.to_string())
            }
        })
        .await;
        assert_eq!(described.global_masters[0].pid, pid);
    }

    /// Starts the initial voters.
    pub async fn start_all(&mut self) {
        for id in 1..=self.voters as u64 {
            self.start(id).await;
        }
    }

    pub fn proc(&mut self, id: u64) -> &mut Proc {
        self.procs[id as usize - 1]
            .as_mut()
            .expect("member running")
    }

    /// SIGKILLs member `id`.
    pub fn kill(&mut self, id: u64) -> Proc {
        let mut proc = self.procs[id as usize - 1].take().expect("member running");
        proc.kill();
        proc
    }

    pub fn running(&self) -> Vec<u64> {
        (self.members.iter())
            .filter(|m| self.procs[m.id as usize - 1].is_some())
            .map(|m| m.id)
            .collect()
    }

    pub async fn status(&self, id: u64) -> Result<StatusReply, String> {
        let mut client = Client::new(vec![self.addr(id)], &self.operator)
            .map_err(|e| e.to_string())?
            .with_attempt_timeout(Duration::from_secs(2));
        client
            .status(&self.addr(id))
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits until every running member names the same leader, which calls itself the
    /// leader, and returns its id.
    pub async fn leader(&self) -> u64 {
        self.leader_among(&self.running()).await
    }

    /// Waits until the members `ids` name the same leader, one of them, which calls
    /// itself the leader; the others (stopped, perhaps) are not asked.
    pub async fn leader_among(&self, ids: &[u64]) -> u64 {
        let running = ids.to_vec();
        wait_for("one leader all members agree on", DEADLINE, || async {
            let mut leaders = Vec::new();
            for &id in &running {
                let status = self.status(id).await?;
                leaders.push(status.leader_id);
                if status.leader_id == id && status.role != "leader" {
                    return Err(format!("{id} is named leader but is {}", status.role));
                }
            }
            match leaders.first() {
                Some(&first) if first != 0 && leaders.iter().all(|&l| l == first) => {
                    if running.contains(&first) {
                        Ok(first)
                    } else {
                        Err(format!("leader {first} is not running"))
                    }
                }
                _ => Err(format!("leaders seen: {leaders:?}")),
            }
        })
        .await
    }

    /// Member `id`'s own applied catalog (a local read).
    pub async fn local_catalog(&self, id: u64) -> Result<Catalog, String> {
        let mut client = Client::new(vec![self.addr(id)], &self.operator)
            .map_err(|e| e.to_string())?
            .with_attempt_timeout(Duration::from_secs(2));
        let request = ReadRequest {
            query: Query::Catalog,
            consistency: Consistency::Local,
        };
        let reply = client
            .read_at(&self.addr(id), &request)
            .await
            .map_err(|e| e.to_string())?;
        match reply.answer {
            Answer::Catalog(catalog) => Ok(catalog),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// The catalog as the leader confirms it (a linearizable read).
    pub async fn catalog(&self) -> Catalog {
        let request = ReadRequest {
            query: Query::Catalog,
            consistency: Consistency::Linearizable,
        };
        let reply = self
            .client()
            .read(&request, DEADLINE)
            .await
            .expect("a linearizable read");
        match reply.answer {
            Answer::Catalog(catalog) => catalog,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    pub fn http_get(&self, id: u64, path: &str) -> String {
        format!("http://{}{path}", self.spec(id).http)
    }

    /// The operator's certificate flags.
    pub fn tls_args(&self) -> Vec<String> {
        let tls = &self.operator;
        [
            ("--ca", &tls.ca_cert),
            ("--cert", &tls.cert),
            ("--key", &tls.key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect()
    }

    /// Runs `global-master <args> --addr <initial voters> <operator certificate>`.
    pub async fn operator(&self, args: &[&str]) -> CliOutput {
        self.operator_at(&self.raft_addrs(), args).await
    }

    /// Runs `global-master <args> --addr <addrs> <operator certificate>`.
    pub async fn operator_at(&self, addrs: &[String], args: &[&str]) -> CliOutput {
        let mut argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        argv.extend(["--addr".to_owned(), addrs.join(",")]);
        argv.extend(self.tls_args());
        cli(&argv).await
    }
}

/// What a `global-master` subcommand printed, and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Standard output as JSON; panics, naming the output, unless the command succeeded.
    pub fn json(&self) -> serde_json::Value {
        assert_eq!(self.code, Some(0), "the command failed: {self:?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Runs the `global-master` binary with `args` and collects its output.
pub async fn cli(args: &[String]) -> CliOutput {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running global-master");
    CliOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for proc in self.procs.iter_mut().flatten() {
            proc.kill();
        }
        if std::thread::panicking() {
            for member in &self.members {
                let log = std::fs::read_to_string(&member.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("----- gm-{} log (last {} lines)", member.id, tail.len());
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
    }
}
