//! What an operator sees of a running federation (issue "Operating Starling"): a
//! two-region `region-node dev` with a three-member global master carries realtime
//! traffic homed in one region and relayed to the other, then
//!
//! 1. every node's and member's `GET /metrics` holds the named series with values
//!    that match the traffic and the cluster's shape;
//! 2. every expression of the Grafana dashboard in `deploy/grafana/` names a series
//!    that some process actually exported;
//! 3. the `/dashboard` page, loaded in headless Chromium, shows the regions, their
//!    node counts, the global master's leader, the links and the busiest channel as
//!    they are.
//!
//! And a single node logs human-readable text by default, JSON lines on request.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use starling_tests::federation::{wait_healthy, Described, Launcher};
use starling_tests::metrics::{scrape, Scrape};
use starling_tests::{rest, Client, Format};

const CHANNEL: &str = "ops-probe";
/// Messages each region publishes.
const PER_REGION: usize = 5;
/// Gauges are refreshed every second; counters at once. Generous for a busy machine.
const SETTLE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);
/// How long Chromium may take to load and render the page.
const BROWSER: Duration = Duration::from_secs(60);

/// Scrapes `addrs` until `check` accepts them all, or fails with its last complaint.
async fn scrape_until(
    addrs: &[String],
    check: impl Fn(&[Scrape]) -> Result<()>,
) -> Result<Vec<Scrape>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut scrapes = Vec::new();
        for addr in addrs {
            scrapes.push(scrape(addr).await?);
        }
        match check(&scrapes) {
            Ok(()) => return Ok(scrapes),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

#[tokio::test]
async fn a_federation_reports_itself_in_metrics_grafana_and_the_dashboard() -> Result<()> {
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
    let described = launcher.described().await?;
    for member in &described.global_masters {
        wait_healthy(&member.id, member.http.as_deref().unwrap_or_default()).await?;
    }
    for node in described.regions.iter().flat_map(|r| &r.nodes) {
        wait_healthy(&node.id, &node.client).await?;
    }

    eprintln!("phase: traffic homed in eu, published and subscribed in both regions");
    // The subscribers stay connected, so the connection and attachment gauges have
    // something to show.
    let _subscribers = traffic(&described).await?;

    eprintln!("phase: every node's /metrics reflects the traffic and the cluster");
    let node_scrapes = check_node_metrics(&described).await?;

    eprintln!("phase: every global master member's /metrics shows one leader and one term");
    let (gm_scrapes, leader) = check_global_metrics(&described).await?;

    eprintln!("phase: the Grafana dashboard names only exported series");
    let mut exported = BTreeSet::new();
    for scrape in node_scrapes.iter().chain(&gm_scrapes) {
        exported.extend(scrape.names());
    }
    check_grafana(&repo_root().join("deploy/grafana/starling.json"), &exported)?;

    eprintln!("phase: /dashboard needs the token when a wrong one is presented");
    let eu1 = &described.region("eu")?.nodes[0];
    let wrong = rest::http()
        .get(format!("http://{}/dashboard/state", eu1.client))
        .bearer_auth("not-the-admin-token")
        .send()
        .await?;
    ensure!(
        wrong.status() == StatusCode::UNAUTHORIZED,
        "{}",
        wrong.status()
    );

    eprintln!("phase: headless Chromium renders /dashboard as the cluster is");
    check_dashboard(&described, &eu1.client, leader).await
}

fn addr(s: &str) -> Result<SocketAddr> {
    s.parse().with_context(|| format!("address {s:?}"))
}

/// Subscribers on one node of each region; publishers on the other node of each.
/// The channel is first used in eu, so eu homes it and us relays it over a bridge.
async fn traffic(described: &Described) -> Result<(Client, Client)> {
    let key = &described.apps[0].keys[0].key;
    let (eu, us) = (described.region("eu")?, described.region("us")?);
    let mut eu_sub =
        Client::connect_with_key(addr(&eu.nodes[0].client)?, key, "", Format::Json).await?;
    eu_sub.attach(CHANNEL).await?;
    let mut eu_pub =
        Client::connect_with_key(addr(&eu.nodes[1].client)?, key, "", Format::Msgpack).await?;
    eu_pub
        .publish_acked(CHANNEL, json!([{"name": "eu-0"}]))
        .await?;

    let mut us_sub =
        Client::connect_with_key(addr(&us.nodes[0].client)?, key, "", Format::Msgpack).await?;
    us_sub.attach(CHANNEL).await?;
    let mut us_pub =
        Client::connect_with_key(addr(&us.nodes[1].client)?, key, "", Format::Json).await?;
    for i in 1..PER_REGION {
        eu_pub
            .publish_acked(CHANNEL, json!([{ "name": format!("eu-{i}") }]))
            .await?;
    }
    for i in 0..PER_REGION {
        us_pub
            .publish_acked(CHANNEL, json!([{ "name": format!("us-{i}") }]))
            .await?;
    }
    // eu's subscriber saw the first eu message before us attached; us's did not.
    eu_sub.collect_messages(CHANNEL, 2 * PER_REGION).await?;
    us_sub.collect_messages(CHANNEL, 2 * PER_REGION - 1).await?;
    Ok((eu_sub, us_sub))
}

async fn check_node_metrics(described: &Described) -> Result<Vec<Scrape>> {
    let mut all = Vec::new();
    for region in &described.regions {
        let addrs: Vec<String> = region.nodes.iter().map(|n| n.client.clone()).collect();
        let other = if region.name == "eu" { "us" } else { "eu" };
        let scrapes = scrape_until(&addrs, |scrapes| {
            for (node, s) in region.nodes.iter().zip(scrapes) {
                let id = &node.id;
                for (name, want) in [
                    ("starling_mesh_live_nodes", 2.0),
                    ("starling_mesh_known_nodes", 2.0),
                    ("starling_quorum", 1.0),
                    ("starling_lease_held", 1.0),
                ] {
                    ensure!(
                        s.sum(name, &[]) == Some(want),
                        "{id}: {name} {:?}",
                        s.sum(name, &[])
                    );
                }
                for name in [
                    "starling_connections",
                    "starling_attachments",
                    "starling_channels",
                    "starling_channel_masters",
                    "starling_channel_relays",
                    "starling_bridge_backlog",
                    "starling_copies_degraded",
                    "starling_messages_out_total",
                    "starling_deliveries_total",
                    "starling_limit_refusals",
                ] {
                    ensure!(s.sum(name, &[]).is_some(), "{id}: no {name}");
                }
                ensure!(
                    s.sum("starling_ring_changes_total", &[]) >= Some(1.0),
                    "{id}: the ring was never built"
                );
                ensure!(
                    s.sum("starling_bridge_backlog", &[]) == Some(0.0),
                    "{id}: backlog"
                );
            }
            let sum = |name: &str, labels: &[&str]| -> f64 {
                scrapes.iter().filter_map(|s| s.sum(name, labels)).sum()
            };
            let published = sum("starling_messages_in_total", &["transport=\"realtime\""]);
            ensure!(
                published == PER_REGION as f64,
                "{}: messages in {published}",
                region.name
            );
            let acks = sum("starling_ack_latency_seconds_count", &[]);
            ensure!(
                acks == PER_REGION as f64,
                "{}: ACK latency count {acks}",
                region.name
            );
            ensure!(
                sum("starling_ack_latency_seconds_sum", &[]) > 0.0,
                "ACK latency sum"
            );
            let inf = sum("starling_ack_latency_seconds_bucket", &["le=\"+Inf\""]);
            ensure!(
                inf == acks,
                "{}: +Inf bucket {inf} != count {acks}",
                region.name
            );
            // The region's subscriber got every message (its first one missing in us).
            let out = sum("starling_messages_out_total", &[]);
            ensure!(
                out >= (2 * PER_REGION - 1) as f64,
                "{}: messages out {out}",
                region.name
            );
            ensure!(
                sum("starling_connections", &[]) >= 1.0,
                "{}: connections",
                region.name
            );
            ensure!(
                sum("starling_attachments", &[]) >= 1.0,
                "{}: attachments",
                region.name
            );
            Ok(())
        })
        .await?;

        // eu homes the channel: a master there, and a us node's bridge accepted.
        let sum = |name: &str, labels: &[&str]| -> f64 {
            scrapes.iter().filter_map(|s| s.sum(name, labels)).sum()
        };
        let region_label = format!("region=\"{other}\"");
        if region.name == "eu" {
            ensure!(
                sum("starling_channel_masters", &[]) >= 1.0,
                "eu masters nothing"
            );
            let acquired = sum("starling_master_changes_total", &["change=\"acquired\""]);
            ensure!(acquired >= 1.0, "eu acquired {acquired}");
            let accepted = sum("starling_bridge_accepted_links", &[&region_label]);
            ensure!(accepted >= 1.0, "eu accepted {accepted} links from us");
        } else {
            ensure!(
                sum("starling_channel_relays", &[]) >= 1.0,
                "us relays nothing"
            );
            let up = sum("starling_bridge_link_up", &[&region_label]);
            ensure!(up >= 1.0, "no us link to eu is up");
            let connects = sum("starling_bridge_connects_total", &[&region_label]);
            ensure!(connects >= 1.0, "us never connected to eu");
        }
        all.extend(scrapes);
    }
    Ok(all)
}

/// One leader, one term, a commit index past the registrations; returns the leader id.
async fn check_global_metrics(described: &Described) -> Result<(Vec<Scrape>, u64)> {
    let addrs: Vec<String> = (described.global_masters.iter())
        .map(|m| m.http.clone().context("a member without an HTTP address"))
        .collect::<Result<_>>()?;
    let scrapes = scrape_until(&addrs, |scrapes| {
        let leaders = (scrapes.iter())
            .filter(|s| s.sum("starling_raft_role", &["role=\"leader\""]) == Some(1.0))
            .count();
        ensure!(leaders == 1, "{leaders} members say they lead");
        let terms: BTreeSet<u64> = (scrapes.iter())
            .filter_map(|s| s.sum("starling_raft_term", &[]).map(|t| t as u64))
            .collect();
        ensure!(terms.len() == 1 && !terms.contains(&0), "terms {terms:?}");
        let leader_ids: BTreeSet<u64> = (scrapes.iter())
            .filter_map(|s| s.sum("starling_raft_leader_id", &[]).map(|t| t as u64))
            .collect();
        ensure!(
            leader_ids.len() == 1 && !leader_ids.contains(&0),
            "leader ids {leader_ids:?}"
        );
        for s in scrapes {
            // Two regions registered and the channel's home assigned, at least.
            let commit = s.sum("starling_raft_commit_index", &[]).unwrap_or(0.0);
            ensure!(commit >= 3.0, "commit index {commit}");
            ensure!(s.sum("starling_raft_voters", &[]) == Some(3.0), "voters");
        }
        Ok(())
    })
    .await?;
    let leader = scrapes[0]
        .sum("starling_raft_leader_id", &[])
        .context("no leader id")? as u64;
    Ok((scrapes, leader))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// Every `expr` of every panel names at least one series, and only exported ones.
fn check_grafana(path: &Path, exported: &BTreeSet<String>) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let dashboard: Value = serde_json::from_str(&text).context("the dashboard is not JSON")?;
    let panels = dashboard["panels"].as_array().context("no panels")?;
    ensure!(panels.len() >= 10, "only {} panels", panels.len());
    let mut checked = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let targets = panel["targets"]
            .as_array()
            .context("panel without targets")?;
        ensure!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().context("target without expr")?;
            let names = series_names(expr);
            ensure!(
                !names.is_empty(),
                "{title}: {expr} names no starling series"
            );
            for name in names {
                ensure!(
                    exported.contains(&name),
                    "{title}: {name} is not exported by any process"
                );
            }
            checked += 1;
        }
    }
    eprintln!("checked {checked} Grafana expressions");
    Ok(())
}

/// The `starling_*` identifiers of a PromQL expression.
fn series_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("starling_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Loads the page in Chromium, lets its script poll, and reads the rendered DOM.
async fn check_dashboard(described: &Described, node: &str, leader: u64) -> Result<()> {
    let deadline = Instant::now() + BROWSER;
    loop {
        let dom = render(&format!("http://{node}/dashboard")).await?;
        match dashboard_matches(&dom, described, leader) {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() > deadline => {
                bail!("{error:#}\n--- rendered DOM ---\n{dom}")
            }
            Err(error) => eprintln!("dashboard not there yet: {error:#}"),
        }
    }
}

fn dashboard_matches(dom: &str, described: &Described, leader: u64) -> Result<()> {
    ensure!(
        !dom.contains("data-rendered=\"0\""),
        "the page never rendered the state"
    );
    for region in &described.regions {
        let card = format!(
            "data-region=\"{}\" data-node-count=\"{}\"",
            region.name,
            region.nodes.len()
        );
        ensure!(dom.contains(&card), "no {card}");
    }
    let shown = dom.matches("data-region=\"").count();
    ensure!(shown == described.regions.len(), "{shown} regions shown");
    for node in &described.region("eu")?.nodes {
        ensure!(
            dom.contains(&format!("data-node=\"{}\"", node.id)),
            "node {} missing",
            node.id
        );
        ensure!(
            dom.contains(&format!("data-owner=\"{}\"", node.id)),
            "ring owner {} missing",
            node.id
        );
    }
    let leader_text = format!("id=\"leader\">{leader}<");
    ensure!(dom.contains(&leader_text), "leader {leader} not shown");
    let members = dom.matches("data-member=\"").count();
    ensure!(
        members == described.global_masters.len(),
        "{members} members shown"
    );
    ensure!(
        dom.contains("data-role=\"leader\""),
        "no member shown as leader"
    );
    ensure!(
        dom.contains("data-link=\"us&gt;eu\"") || dom.contains("data-link=\"us>eu\""),
        "no us→eu link"
    );
    ensure!(
        dom.contains(&format!("data-channel=\"{CHANNEL}\"")),
        "{CHANNEL} not among the busiest"
    );
    // Rates need two polls; the page polls every 2 s of the 6 s of virtual time.
    for rate in ["rate-in", "rate-out", "rate-deliveries"] {
        let shown = dom
            .split(&format!("id=\"{rate}\">"))
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .unwrap_or_default();
        ensure!(shown.parse::<f64>().is_ok(), "{rate} shows {shown:?}");
    }
    Ok(())
}

/// Chromium as the issue prescribes: headless, contacting nothing but the page, with a
/// fresh profile. `--virtual-time-budget` lets the page's timers and fetches run
/// before the DOM is dumped.
async fn render(url: &str) -> Result<String> {
    let browser = std::env::var("STARLING_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    ensure!(
        Path::new(&browser).exists(),
        "{browser} is missing: scripts/test installs Debian's chromium"
    );
    let profile = tempfile::tempdir()?;
    let child = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {browser}"))?;
    let output = tokio::time::timeout(BROWSER, child.wait_with_output())
        .await
        .context("chromium did not finish")??;
    ensure!(
        output.status.success(),
        "chromium: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `log.format`: text for a person by default, one JSON object per line on request,
/// with the structured fields of style.md (`node.id`, `region.id`).
#[tokio::test]
async fn logs_are_text_by_default_and_json_on_request() -> Result<()> {
    let json = starling_tests::Node::start_with(
        starling_tests::NodeOptions::default()
            .arg("--log-format")
            .arg("json"),
    )
    .await?;
    let log = json.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(!lines.is_empty(), "a JSON-logging node logged nothing");
    let mut ready = None;
    for line in &lines {
        let entry: Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON line: {line}"))?;
        ensure!(
            entry["level"].is_string() && entry["fields"].is_object(),
            "{entry}"
        );
        if entry["fields"]["message"] == "region node ready" {
            ready = Some(entry);
        }
    }
    let ready = ready.with_context(|| format!("no ready line in {log}"))?;
    ensure!(ready["level"] == "INFO", "{ready}");
    ensure!(ready["fields"]["node.id"].is_string(), "{ready}");
    ensure!(ready["fields"]["region.id"] == "local", "{ready}");

    let text = starling_tests::Node::start().await?;
    let log = text.log();
    let ready = (log.lines())
        .find(|l| l.contains("region node ready"))
        .with_context(|| format!("no ready line in {log}"))?;
    ensure!(
        serde_json::from_str::<Value>(ready).is_err() && ready.contains("INFO"),
        "the default is not human-readable text: {ready}"
    );
    Ok(())
}
