//! `region-node dev` as a federation launcher (design.md, "`region-node dev`"): one
//! command starts a global master group of real processes and two regions of nodes,
//! describes them all, and stops every one of them on Ctrl-C.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};
use starling_tests::federation::{alive, signal, wait_healthy, Described, Launcher, HEALTHY};
use starling_tests::rest::{self, basic, bearer};

/// How long an app created in one region may take to work in another.
const PROPAGATION: Duration = Duration::from_secs(10);
/// From SIGINT until every process the launcher started is gone.
const STOP: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(100);

/// The summary on standard output names each region's entry, the API key, the admin
/// token and the dashboard, as the README promises.
fn check_summary(log: &str, described: &Described) -> Result<()> {
    for region in &described.regions {
        let entry = format!(
            "region {}: entry (connect clients here): {}",
            region.name, region.entry
        );
        ensure!(log.contains(&entry), "no {entry:?} in:\n{log}");
    }
    let key = &described.apps[0].keys[0].key;
    ensure!(
        log.contains(&format!("API key: {key}")),
        "no API key in:\n{log}"
    );
    let token = format!("admin token: {}", described.admin_token);
    ensure!(log.contains(&token), "no admin token in:\n{log}");
    ensure!(
        log.contains("/dashboard"),
        "no dashboard address in:\n{log}"
    );
    Ok(())
}

fn check_shape(described: &Described) -> Result<()> {
    ensure!(
        described.global_masters.len() == 3,
        "{:?}",
        described.global_masters
    );
    for member in &described.global_masters {
        ensure!(
            alive(member.pid),
            "global master {} is not running",
            member.id
        );
        ensure!(
            member.raft.is_some() && member.http.is_some() && !member.argv.is_empty(),
            "{member:?}"
        );
    }
    let names: Vec<&str> = described.regions.iter().map(|r| r.name.as_str()).collect();
    ensure!(names == ["eu", "us"], "regions {names:?}");
    for region in &described.regions {
        ensure!(region.nodes.len() == 2, "{region:?}");
        for node in &region.nodes {
            ensure!(alive(node.pid), "node {} is not running", node.id);
            ensure!(node.bridge.is_some(), "node {} has no bridge", node.id);
            ensure!(
                node.id.starts_with(&format!("{}-", region.name)),
                "{node:?}"
            );
        }
    }
    let mut entries: Vec<&str> = described.regions.iter().map(|r| r.entry.as_str()).collect();
    entries.sort_unstable();
    entries.dedup();
    ensure!(entries.len() == 2, "entries are not distinct: {entries:?}");
    Ok(())
}

/// Creates an app through `client` with the admin token; returns its first full key.
async fn create_app(client: &str, admin_token: &str) -> Result<String> {
    let response = rest::http()
        .post(format!("http://{client}/apps"))
        .header(AUTHORIZATION, bearer(admin_token))
        .json(&json!({"keys": [{}]}))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status == StatusCode::CREATED, "POST /apps: {status} {body}");
    Ok(body["keys"][0]["keyStr"]
        .as_str()
        .with_context(|| format!("keys[0].keyStr: {body}"))?
        .to_owned())
}

/// Polls REST history with `key` on `client` until it answers 200.
async fn wait_key_works(client: &str, key: &str) -> Result<()> {
    let http = rest::http();
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let response = http
            .get(format!("http://{client}/channels/x/messages"))
            .header(AUTHORIZATION, basic(key))
            .send()
            .await?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(());
        }
        if Instant::now() > deadline {
            let body = response.text().await.unwrap_or_default();
            bail!("key still refused after {PROPAGATION:?}: {status} {body}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn dev_starts_a_federation_and_ctrl_c_stops_every_process() -> Result<()> {
    let mut launcher = Launcher::start(&[
        "--regions",
        "eu,us",
        "--nodes",
        "2",
        "--global-masters",
        "3",
    ])?;
    let result = scenario(&mut launcher).await;
    launcher.explain(result)
}

async fn scenario(launcher: &mut Launcher) -> Result<()> {
    eprintln!("phase: the launcher describes 3 global masters and 2 regions of 2 nodes");
    let described = launcher.described().await?;
    check_shape(&described)?;

    eprintln!("phase: the launcher told the person at the terminal where to connect");
    check_summary(&launcher.log(), &described)?;

    eprintln!("phase: every node and every global master reports ready");
    for member in &described.global_masters {
        wait_healthy(&member.id, member.http.as_deref().unwrap_or_default()).await?;
    }
    for node in described.regions.iter().flat_map(|r| &r.nodes) {
        wait_healthy(&node.id, &node.client).await?;
    }
    let data = launcher
        .data
        .clone()
        .context("no data folder in the nodes' argv")?;
    for node in described.regions.iter().flat_map(|r| &r.nodes) {
        let log = std::fs::read_to_string(data.join(&node.id).join("node.log"))?;
        ensure!(
            !log.contains("unknown environment variable STARLING_EXIT_WITH_PARENT"),
            "{} warned about the launcher's variable",
            node.id
        );
    }

    eprintln!("phase: an app created through eu authenticates in us");
    let eu = &described.region("eu")?.nodes[0];
    let us = &described.region("us")?.nodes[1];
    let key = create_app(&eu.client, &described.admin_token).await?;
    wait_key_works(&us.client, &key).await?;

    eprintln!("phase: SIGINT stops every process and removes the temporary data folder");
    signal("-INT", launcher.child.id());
    let deadline = Instant::now() + STOP;
    let status = loop {
        if let Some(status) = launcher.child.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "launcher still running after {STOP:?}"
        );
        tokio::time::sleep(POLL).await;
    };
    ensure!(status.success(), "launcher exited with {status}");
    loop {
        let running: Vec<u32> = launcher
            .pids
            .iter()
            .copied()
            .filter(|p| alive(*p))
            .collect();
        if running.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "still running {STOP:?} after SIGINT: {running:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    ensure!(!data.exists(), "{} was not removed", data.display());
    Ok(())
}

/// A node restarted from its describe file's `argv` rejoins its region on the same
/// addresses. The region's first node once came back seedless on a new mesh port and
/// formed a region of its own beside the others (found by review): two sequencers.
#[tokio::test]
async fn a_node_restarted_from_its_argv_rejoins_its_region() -> Result<()> {
    let mut launcher = Launcher::start(&["--nodes", "3", "--failure-timeout-ms", "1000"])?;
    let described = launcher.described().await?;
    let region = described.region("local")?;
    let first = &region.nodes[0];
    for node in &region.nodes {
        wait_healthy(&node.id, &node.client).await?;
    }

    signal("-KILL", first.pid);
    let deadline = Instant::now() + HEALTHY;
    while alive(first.pid) {
        ensure!(Instant::now() < deadline, "{} did not die", first.id);
        tokio::time::sleep(POLL).await;
    }
    let log = std::fs::File::create(launcher.dir.path().join("restarted.log"))?;
    let mut restarted = Command::new(&first.argv[0])
        .args(&first.argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    launcher.pids.push(restarted.id());

    // Same client address, and a mesh view of the whole region, not of itself alone.
    let deadline = Instant::now() + HEALTHY;
    let body = loop {
        let answer = rest::http()
            .get(format!("http://{}/health", first.client))
            .send()
            .await;
        if let Ok(response) = answer {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if body["mesh"]["live"] == 3 {
                break body;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "{} never rejoined its region",
            first.id
        );
        tokio::time::sleep(POLL).await;
    };
    ensure!(
        body["mesh"]["known"] == 3,
        "the restarted node's view: {body}"
    );
    let _ = restarted.kill();
    let _ = restarted.wait();
    Ok(())
}
