//! An idle node stays idle: with clients connected and attached but nothing
//! published, its periodic work (region ticks, the embedded global master's raft
//! heartbeats and gauges, the lease heartbeat, each connection's one timer) costs a
//! few percent of a core at most. A loop that wakes itself (once: the raft gauges
//! exporter following openraft's metrics, which its own reads changed) shows up here
//! as a whole core.

use std::time::Duration;

use anyhow::{ensure, Result};
use starling_tests::{Client, Format, Node};

/// Connections kept open, each attached to its own channel.
const CONNECTIONS: usize = 20;
/// How long the node's CPU time is watched. A measurement window, not a wait for a
/// condition: nothing is expected to happen in it.
const WINDOW: Duration = Duration::from_secs(4);
/// The most CPU the node may use in the window: 10% of one core, in a debug build on
/// a loaded machine (a release build idles at well under 1%).
const MAX_CPU: Duration = Duration::from_millis(400);

#[tokio::test]
async fn an_idle_node_uses_almost_no_cpu() -> Result<()> {
    let node = Node::start().await?;
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let mut client = Client::connect(&node, "", Format::Msgpack).await?;
        client.attach(&format!("idle-{i}")).await?;
        clients.push(client);
    }

    let before = node.cpu_time()?;
    tokio::time::sleep(WINDOW).await;
    let used = node.cpu_time()? - before;

    eprintln!("idle node: {used:?} of CPU in {WINDOW:?}");
    node.assert_running()?;
    ensure!(
        used <= MAX_CPU,
        "an idle node used {used:?} of CPU in {WINDOW:?} (at most {MAX_CPU:?})"
    );
    Ok(())
}
