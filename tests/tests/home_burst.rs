//! A burst of channel creation: ten thousand channels first used on one node at
//! once. Each needs a home from the global master, and the region's lease heartbeat
//! goes through the same control plane. The node must answer every attachment,
//! home the channels in a few batched writes rather than one raft entry each, and keep
//! its sequencing lease all along (a lapse sends every client away with 50003).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures_util::future::try_join_all;
use serde_json::json;
use starling_tests::client::is_action;
use starling_tests::global::GlobalGroup;
use starling_tests::metrics::{scrape, Scrape};
use starling_tests::{action, Client, Format, Node, NodeOptions};

/// Distinct channels attached at once.
const CHANNELS: usize = 10_000;
/// Connections the channels are spread over (each attaches its share at once).
const CONNECTIONS: usize = 50;
/// A lease short enough that heartbeats held up behind the burst's home writes for a
/// few seconds let it lapse, long enough for a loaded 2-core machine otherwise.
const LEASE_MS: &str = "3000";
const HEARTBEAT_MS: &str = "200";
/// For every attachment of the burst to be answered (a debug build homes thousands
/// of channels a second once writes are batched; one write each took seconds).
const BURST_DEADLINE: Duration = Duration::from_secs(110);
/// The fewest channels a home write must carry on average: "far fewer writes than
/// channels" with room for a burst that trickles in.
const MIN_CHANNELS_PER_WRITE: f64 = 10.0;
/// How long counters may take to show the burst (the raft gauges refresh each second).
const SETTLE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_burst_of_new_channels_is_homed_in_few_writes_and_keeps_the_lease() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let config = format!(
        "[node]\nid = \"eu-1\"\nregion = \"eu\"\n\n{}",
        group.node_config("eu")?
    );
    let node = Node::start_with(burst_options().config(config)).await?;

    let homed = burst(&node, &group.http_addrs()).await?;

    eprintln!("phase: the global master homes every channel of the burst in eu");
    let catalog = group.catalog().await?;
    let in_eu = (catalog.homes())
        .filter(|(channel, home)| homed.contains(channel.as_str()) && home.region == "eu")
        .count();
    ensure!(
        in_eu == CHANNELS,
        "{in_eu} of {CHANNELS} channels homed in eu"
    );
    Ok(())
}

#[tokio::test]
async fn a_burst_of_new_channels_on_a_node_with_the_embedded_global_master_keeps_the_lease(
) -> Result<()> {
    let node = Node::start_with(burst_options()).await?;
    // The embedded member's raft gauges and counters are on the node's own /metrics.
    let addr = node.addr().to_string();
    burst(&node, &[addr]).await?;
    Ok(())
}

/// A short lease with frequent heartbeats, and room for each connection's channels.
fn burst_options() -> NodeOptions {
    let per_connection = (CHANNELS / CONNECTIONS).to_string();
    NodeOptions::default()
        .env("STARLING_GLOBAL__LEASE_MS", LEASE_MS)
        .env("STARLING_GLOBAL__HEARTBEAT_MS", HEARTBEAT_MS)
        .env(
            "STARLING_LIMITS__MAX_CHANNELS_PER_CONNECTION",
            per_connection,
        )
}

/// Attaches [`CHANNELS`] new channels at once on `node` and checks the burst: every
/// attachment answered in time, no client sent away, the lease never lapsed, and far
/// fewer home writes than channels, as the node counts them and as the global
/// master members (their `/metrics` at `members`) applied them. Returns the channels'
/// catalog keys (`appId/name`).
async fn burst(node: &Node, members: &[String]) -> Result<BTreeSet<String>> {
    let node_addr = node.addr().to_string();
    let before = scrape(&node_addr).await?;
    let gm_before = max_over(members, GM_HOME_COMMANDS).await?;
    let log_before = max_over(members, &[("starling_raft_last_log_index", &[])]).await?;

    eprintln!("phase: {CONNECTIONS} connections attach {CHANNELS} new channels at once");
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(Client::connect(node, "", Format::Msgpack).await?);
    }
    let channels: Vec<Vec<String>> = (0..CONNECTIONS)
        .map(|c| {
            (0..CHANNELS / CONNECTIONS)
                .map(|i| format!("burst-{c}-{i}"))
                .collect()
        })
        .collect();
    let started = Instant::now();
    for (client, names) in clients.iter_mut().zip(&channels) {
        for name in names {
            let attach = json!({"action": action::ATTACH, "channel": name});
            client.send(&attach).await?;
        }
    }
    let deadline = started + BURST_DEADLINE;
    let waits = (clients.iter_mut())
        .zip(&channels)
        .map(|(client, names)| all_attached(client, names, deadline));
    try_join_all(waits).await?;
    eprintln!(
        "phase: {CHANNELS} channels attached in {:?}",
        started.elapsed()
    );

    eprintln!("phase: the channels sequence, and the lease held throughout");
    for (client, names) in clients.iter_mut().zip(&channels) {
        for name in names.iter().step_by(1000) {
            client
                .publish_acked(name, json!([{"name": "after-burst"}]))
                .await?;
        }
    }
    let after = scrape(&node_addr).await?;
    ensure!(
        after.sum("starling_lease_held", &[]) == Some(1.0),
        "the lease is not held after the burst"
    );
    let lapses = after.sum("starling_lease_lapses_total", &[]);
    ensure!(
        lapses == Some(0.0),
        "the lease lapsed during the burst ({lapses:?} times)"
    );

    eprintln!("phase: far fewer home writes than channels");
    let log_after = settled_max(members, &[("starling_raft_last_log_index", &[])], |v| {
        v > log_before
    })
    .await?;
    eprintln!(
        "phase: {} raft entries during the burst",
        log_after - log_before
    );
    let grew = |name: &str| delta(&before, &after, name, &["command=\"assign\""]);
    let (writes, carried) = (
        grew("starling_home_writes_total"),
        grew("starling_home_channels_total"),
    );
    eprintln!("phase: the node made {writes} home writes carrying {carried} channels");
    ensure!(
        carried >= CHANNELS as f64,
        "home writes carried {carried} channels, fewer than the {CHANNELS} attached"
    );
    ensure!(
        writes * MIN_CHANNELS_PER_WRITE <= CHANNELS as f64,
        "{writes} home writes for {CHANNELS} channels"
    );
    let gm_after = settled_max(members, GM_HOME_COMMANDS, |v| v > gm_before).await?;
    let applied = gm_after - gm_before;
    ensure!(
        applied * MIN_CHANNELS_PER_WRITE <= CHANNELS as f64,
        "the global master applied {applied} home commands for {CHANNELS} channels"
    );

    let app = node.app_id();
    Ok((channels.iter().flatten())
        .map(|name| format!("{app}/{name}"))
        .collect())
}

/// The global master's commands that assign homes, one channel or many at a time.
const GM_HOME_COMMANDS: &[(&str, &[&str])] = &[
    (
        "starling_global_commands_total",
        &["command=\"get_or_assign_home\""],
    ),
    (
        "starling_global_commands_total",
        &["command=\"get_or_assign_homes\""],
    ),
];

/// Reads frames until every channel in `names` is ATTACHED; DISCONNECTED or ERROR
/// (the connection or a channel refused) fails at once.
async fn all_attached(client: &mut Client, names: &[String], deadline: Instant) -> Result<()> {
    let mut waiting: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = (client.recv_frame(left).await)
            .with_context(|| format!("{} channels still not attached", waiting.len()))?
            .value;
        ensure!(
            !is_action(&frame, action::DISCONNECTED) && !is_action(&frame, action::ERROR),
            "during the burst: {frame}"
        );
        if is_action(&frame, action::ATTACHED) {
            waiting.remove(frame["channel"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[&str]) -> f64 {
    let value = |s: &Scrape| s.sum(name, labels).unwrap_or(0.0);
    value(after) - value(before)
}

/// The largest total of `series` over the processes at `addrs`: the leader has
/// applied (and logged) at least what any follower has.
async fn max_over(addrs: &[String], series: &[(&str, &[&str])]) -> Result<f64> {
    let mut max = 0.0_f64;
    for addr in addrs {
        let scrape = scrape(addr).await?;
        let total: f64 = (series.iter())
            .filter_map(|(name, labels)| scrape.sum(name, labels))
            .sum();
        max = max.max(total);
    }
    Ok(max)
}

/// [`max_over`] once `settled` accepts it (a gauge refreshed each second), or its
/// last value after [`SETTLE`].
async fn settled_max(
    addrs: &[String],
    series: &[(&str, &[&str])],
    settled: impl Fn(f64) -> bool,
) -> Result<f64> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let value = max_over(addrs, series).await?;
        if settled(value) || Instant::now() > deadline {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
