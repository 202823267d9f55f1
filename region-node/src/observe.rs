//! What a node counts about itself: the Prometheus series `GET /metrics` renders, and
//! the running totals the dashboard turns into rates.
//!
//! Every series name lives here, so `docs/operations.md`, the Grafana dashboard in
//! `deploy/grafana/` and the test that checks it have one list to agree with. Counters
//! the dashboard shows are also kept as plain atomics: the `metrics` recorder cannot be
//! read back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// WebSocket connections open now (gauge).
pub const CONNECTIONS: &str = "starling_connections";
/// Channel attachments of this node's connections (gauge).
pub const ATTACHMENTS: &str = "starling_attachments";
/// Channels with local attachments or mastered here (gauge).
pub const CHANNELS: &str = "starling_channels";
/// Channels this node sequences (gauge).
pub const CHANNEL_MASTERS: &str = "starling_channel_masters";
/// Channels homed in other regions that this node relays (gauge).
pub const CHANNEL_RELAYS: &str = "starling_channel_relays";
/// Messages clients published through this node, by `transport` (counter).
pub const MESSAGES_IN: &str = "starling_messages_in_total";
/// Messages sent to this node's subscribers, one per message and subscriber (counter).
pub const MESSAGES_OUT: &str = "starling_messages_out_total";
/// Frames of sequenced messages queued to subscribers (counter).
pub const DELIVERIES: &str = "starling_deliveries_total";
/// From a realtime publish read off the socket to its ACK or NACK written (histogram); presence actions count too.
pub const ACK_LATENCY: &str = "starling_ack_latency_seconds";
/// Live members of this node's region mesh, itself included (gauge).
pub const MESH_LIVE_NODES: &str = "starling_mesh_live_nodes";
/// Members of the region this node has heard of (gauge).
pub const MESH_KNOWN_NODES: &str = "starling_mesh_known_nodes";
/// Ring rebuilds after the live membership changed (counter).
pub const RING_CHANGES: &str = "starling_ring_changes_total";
/// Channels this node took over or gave up as master, by `change` (counter).
pub const MASTER_CHANGES: &str = "starling_master_changes_total";
/// 1 while this node's bridge link to `region` is open, else 0 (gauge).
pub const BRIDGE_LINK_UP: &str = "starling_bridge_link_up";
/// Publishes relayed to a remote home and not yet answered (gauge).
pub const BRIDGE_BACKLOG: &str = "starling_bridge_backlog";
/// Bridge links other regions' nodes opened to this node, by `region` (gauge).
pub const BRIDGE_ACCEPTED: &str = "starling_bridge_accepted_links";
/// Times a bridge link opened, by `region` (counter).
pub const BRIDGE_CONNECTS: &str = "starling_bridge_connects_total";
/// Clients answered with a limit's error, by `limit` (counter).
pub const LIMIT_REFUSALS: &str = "starling_limit_refusals";
/// 1 while fewer nodes are live than `mesh.replication_factor` copies (gauge).
pub const COPIES_DEGRADED: &str = "starling_copies_degraded";
/// 1 while the region holds its sequencing lease (gauge).
pub const LEASE_HELD: &str = "starling_lease_held";
/// Times this node saw its region's sequencing lease lapse (counter): a lapse a
/// scrape of the gauge may miss.
pub const LEASE_LAPSES: &str = "starling_lease_lapses_total";
/// Writes this node made to the global master for channel homes, by `command`
/// (`assign`, `touch`), each carrying a batch of channels (counter).
pub const HOME_WRITES: &str = "starling_home_writes_total";
/// Channels those home writes carried, by `command` (counter).
pub const HOME_CHANNELS: &str = "starling_home_channels_total";
/// 1 while the node sees a majority of its region (gauge).
pub const QUORUM: &str = "starling_quorum";

/// Histogram buckets for ACK latency: a loopback ACK takes a millisecond or two, one
/// across a bridge a round trip between regions.
const ACK_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Installs the process's Prometheus recorder; the handle renders `/metrics`.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ACK_LATENCY.into()), &ACK_BUCKETS)?
        .install_recorder()?;
    describe();
    register_counters();
    Ok(handle)
}

/// Counters start at zero in every scrape, so a rate over them is 0 rather than
/// missing before the first event.
fn register_counters() {
    for transport in ["realtime", "rest"] {
        metrics::counter!(MESSAGES_IN, "transport" => transport).absolute(0);
    }
    for change in ["acquired", "stepped_down"] {
        metrics::counter!(MASTER_CHANGES, "change" => change).absolute(0);
    }
    for limit in ["connections", "inbound_rate", "inbound_flood", "channels"] {
        metrics::counter!(LIMIT_REFUSALS, "limit" => limit).absolute(0);
    }
    for command in ["assign", "touch"] {
        metrics::counter!(HOME_WRITES, "command" => command).absolute(0);
        metrics::counter!(HOME_CHANNELS, "command" => command).absolute(0);
    }
    for name in [MESSAGES_OUT, DELIVERIES, RING_CHANGES, LEASE_LAPSES] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!(CONNECTIONS).increment(0.0);
}

/// HELP lines, so a scrape says what each series means.
fn describe() {
    metrics::describe_gauge!(CONNECTIONS, "WebSocket connections open now");
    metrics::describe_gauge!(ATTACHMENTS, "channel attachments of local connections");
    metrics::describe_counter!(MESSAGES_IN, "messages published through this node");
    metrics::describe_counter!(MESSAGES_OUT, "messages sent to local subscribers");
    metrics::describe_counter!(DELIVERIES, "message frames queued to local subscribers");
    metrics::describe_histogram!(
        ACK_LATENCY,
        metrics::Unit::Seconds,
        "realtime publish read to ACK or NACK written"
    );
    metrics::describe_counter!(RING_CHANGES, "ring rebuilds after a membership change");
    metrics::describe_counter!(MASTER_CHANGES, "channels taken over or given up");
    metrics::describe_gauge!(
        BRIDGE_LINK_UP,
        "1 while the bridge link to a region is open"
    );
    metrics::describe_gauge!(BRIDGE_BACKLOG, "relayed publishes not yet answered");
    metrics::describe_counter!(LEASE_LAPSES, "times the region's sequencing lease lapsed");
    metrics::describe_counter!(HOME_WRITES, "global master writes for channel homes");
    metrics::describe_counter!(HOME_CHANNELS, "channels the home writes carried");
}

/// Running totals since the process started, for the dashboard's rates.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub messages_in: u64,
    pub messages_out: u64,
    pub deliveries: u64,
}

static MESSAGES_IN_TOTAL: AtomicU64 = AtomicU64::new(0);
static MESSAGES_OUT_TOTAL: AtomicU64 = AtomicU64::new(0);
static DELIVERIES_TOTAL: AtomicU64 = AtomicU64::new(0);

pub fn totals() -> Totals {
    Totals {
        messages_in: MESSAGES_IN_TOTAL.load(Ordering::Relaxed),
        messages_out: MESSAGES_OUT_TOTAL.load(Ordering::Relaxed),
        deliveries: DELIVERIES_TOTAL.load(Ordering::Relaxed),
    }
}

/// `count` messages accepted for publishing, over `transport` (`realtime` or `rest`).
pub fn messages_in(transport: &'static str, count: usize) {
    metrics::counter!(MESSAGES_IN, "transport" => transport).increment(count as u64);
    MESSAGES_IN_TOTAL.fetch_add(count as u64, Ordering::Relaxed);
}

/// One fan-out: a frame queued to `frames` subscribers, `messages` messages in all.
/// Counted once per fan-out, not per subscriber: a metric's registry lookup and a
/// shared atomic per subscriber were a cost that grew with the audience.
pub fn delivered(frames: u64, messages: u64) {
    if frames == 0 {
        return;
    }
    metrics::counter!(DELIVERIES).increment(frames);
    metrics::counter!(MESSAGES_OUT).increment(messages);
    DELIVERIES_TOTAL.fetch_add(frames, Ordering::Relaxed);
    MESSAGES_OUT_TOTAL.fetch_add(messages, Ordering::Relaxed);
}

pub fn ack_latency(elapsed: Duration) {
    metrics::histogram!(ACK_LATENCY).record(elapsed.as_secs_f64());
}

/// One write to the global master for the homes of `channels` channels; `command` is
/// `assign` or `touch`.
pub fn home_write(command: &'static str, channels: usize) {
    metrics::counter!(HOME_WRITES, "command" => command).increment(1);
    metrics::counter!(HOME_CHANNELS, "command" => command).increment(channels as u64);
}

pub fn lease_lapsed() {
    metrics::counter!(LEASE_LAPSES).increment(1);
}

pub fn ring_changed() {
    metrics::counter!(RING_CHANGES).increment(1);
}

/// A channel taken over (`acquired`) or given up (`stepped_down`).
pub fn master_changed(change: &'static str) {
    metrics::counter!(MASTER_CHANGES, "change" => change).increment(1);
}

pub fn bridge_link(region: &str, up: bool) {
    let region = region.to_owned();
    if up {
        metrics::counter!(BRIDGE_CONNECTS, "region" => region.clone()).increment(1);
    }
    metrics::gauge!(BRIDGE_LINK_UP, "region" => region).set(if up { 1.0 } else { 0.0 });
}

/// Accepted bridge links by (remote region, remote node), for the dashboard.
static ACCEPTED: parking_lot::Mutex<BTreeMap<(String, String), usize>> =
    parking_lot::Mutex::new(BTreeMap::new());

/// One bridge link another region's node opened to this node, counted while it lives.
pub struct AcceptedLink {
    region: String,
    node: String,
}

impl AcceptedLink {
    pub fn new(region: &str, node: &str) -> Self {
        let key = (region.to_owned(), node.to_owned());
        let mut accepted = ACCEPTED.lock();
        *accepted.entry(key).or_insert(0) += 1;
        set_accepted_gauge(&accepted, region);
        Self {
            region: region.to_owned(),
            node: node.to_owned(),
        }
    }
}

impl Drop for AcceptedLink {
    fn drop(&mut self) {
        let key = (self.region.clone(), self.node.clone());
        let mut accepted = ACCEPTED.lock();
        if let Some(count) = accepted.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                accepted.remove(&key);
            }
        }
        set_accepted_gauge(&accepted, &self.region);
    }
}

fn set_accepted_gauge(accepted: &BTreeMap<(String, String), usize>, region: &str) {
    let links: usize = (accepted.iter())
        .filter(|((r, _), _)| r == region)
        .map(|(_, n)| n)
        .sum();
    metrics::gauge!(BRIDGE_ACCEPTED, "region" => region.to_owned()).set(links as f64);
}

/// The (remote region, remote node) of every bridge link accepted and open now.
pub fn accepted_links() -> Vec<(String, String)> {
    ACCEPTED.lock().keys().cloned().collect()
}

/// Every series a node exports once it has served a little traffic, for tests and the
/// dashboard check: the names a scrape must show.
pub const SERIES: &[&str] = &[
    CONNECTIONS,
    ATTACHMENTS,
    CHANNELS,
    CHANNEL_MASTERS,
    CHANNEL_RELAYS,
    MESSAGES_IN,
    MESSAGES_OUT,
    DELIVERIES,
    ACK_LATENCY,
    MESH_LIVE_NODES,
    MESH_KNOWN_NODES,
    RING_CHANGES,
    MASTER_CHANGES,
    BRIDGE_LINK_UP,
    BRIDGE_BACKLOG,
    BRIDGE_CONNECTS,
    BRIDGE_ACCEPTED,
    LIMIT_REFUSALS,
    COPIES_DEGRADED,
    LEASE_HELD,
    LEASE_LAPSES,
    HOME_WRITES,
    HOME_CHANNELS,
    QUORUM,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Operators read the series from `docs/operations.md`; a new one must be there.
    #[test]
    fn every_series_is_documented_for_operators() {
        let doc = include_str!("../../docs/operations.md");
        for name in SERIES {
            assert!(
                doc.contains(&format!("`{name}")),
                "{name} is not in operations.md"
            );
        }
    }
}
