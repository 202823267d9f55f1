//! The workloads of benchmarks.md, each against one running server (or region).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::time::Instant;

use crate::load::{self, Layout, Load, Step, StepResult};
use crate::servers::{self, Kind, Region, Server, ServerOpts};
use crate::wire::{self, Endpoint};

/// How a rising-rate search goes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Search {
    pub start_rate: f64,
    pub factor: f64,
    pub max_rate: f64,
    pub step_secs: f64,
    /// Halvings of the gap between the last sustained rate and the first one not.
    pub refine: usize,
}

impl Search {
    /// Sensible rates for `subs` subscribers: from ~200,000 deliveries/s up.
    pub fn for_subscribers(subs: usize, quick: bool) -> Search {
        let start = (200_000.0 / subs as f64).max(10.0);
        Search {
            start_rate: start,
            factor: if quick { 1.6 } else { 1.25 },
            max_rate: start * 100.0,
            step_secs: if quick { 1.5 } else { 3.0 },
            refine: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutRun {
    pub server: Kind,
    pub subscribers: usize,
    pub steps: Vec<StepResult>,
    /// Highest offered rate that was sustained (msgs/s), 0 when none was.
    pub sustained_rate: f64,
    pub sustained_deliveries_per_sec: f64,
}

/// Most messages per publish frame in fanout; more are never due in one tick below
/// 100,000 msgs/s.
const FANOUT_BATCH: usize = 100;

fn channel(prefix: &str, i: usize) -> String {
    format!("bench-{prefix}-{i}")
}

fn fanout_layout(publisher: Endpoint, subscribers: Endpoint, subs: usize) -> Layout {
    fanout_on(publisher, subscribers, subs, channel("fanout", 0))
}

/// One publisher and `subs` subscribers on the channel `ch`.
fn fanout_on(publisher: Endpoint, subscribers: Endpoint, subs: usize, ch: String) -> Layout {
    Layout {
        publisher,
        subscribers: (0..subs)
            .map(|_| (subscribers.clone(), vec![ch.clone()]))
            .collect(),
        sources: Vec::new(),
        channels: vec![ch],
        fanout: subs as u64,
        batch: FANOUT_BATCH,
        track: false,
    }
}

/// Fanout at rising rates until deliveries stop keeping up.
pub async fn fanout_search(
    server: &Server,
    subs: usize,
    search: Search,
) -> anyhow::Result<FanoutRun> {
    let layout = fanout_layout(server.endpoint.clone(), server.endpoint.clone(), subs);
    let mut load = Load::start(layout, load::MAX_STEPS).await?;
    let cpu = || server.cpu_seconds();
    let mut steps: Vec<StepResult> = Vec::new();
    let mut run = async |rate: f64, steps: &mut Vec<StepResult>| -> anyhow::Result<(bool, bool)> {
        let step = Step {
            rate,
            secs: search.step_secs,
        };
        let label = format!("{} fanout {subs} @{rate:.0}/s", server.kind.name());
        let bar = load::bar(&label, (rate * step.secs) as u64 * subs as u64);
        let result = load.run_step(steps.len(), step, &cpu, &bar).await?;
        bar.finish_and_clear();
        let outcome = (
            result.sustained,
            result.delivery < 0.9 || result.subscribers_lost > 0,
        );
        steps.push(result);
        Ok(outcome)
    };

    // Rising rates until two in a row are not sustained (or delivery collapses)...
    let (mut low, mut high) = (0.0, f64::INFINITY);
    let mut rate = search.start_rate;
    let mut misses = 0;
    let mut collapsed = false;
    while rate <= search.max_rate && steps.len() < load::MAX_STEPS - 2 {
        let (sustained, broke) = run(rate, &mut steps).await?;
        if sustained {
            low = rate;
            misses = 0;
        } else {
            high = high.min(rate);
            misses += 1;
        }
        collapsed = broke;
        if misses >= 2 || collapsed {
            break;
        }
        rate *= search.factor;
    }
    // ...then two halvings of the gap between the last sustained and the first not.
    for _ in 0..search.refine {
        if collapsed || low == 0.0 || !high.is_finite() {
            break;
        }
        let mid = (low * high).sqrt();
        let (sustained, broke) = run(mid, &mut steps).await?;
        if sustained {
            low = mid;
        } else {
            high = mid;
        }
        collapsed = broke;
    }
    load.finish().await;

    let best = steps
        .iter()
        .filter(|s| s.sustained)
        .max_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    Ok(FanoutRun {
        server: server.kind,
        subscribers: subs,
        sustained_rate: best.map_or(0.0, |s| s.offered_rate),
        sustained_deliveries_per_sec: best.map_or(0.0, |s| s.offered_rate * subs as f64),
        steps,
    })
}

/// Fanout at one fixed rate, for latency at a given load.
pub async fn fanout_fixed(
    publisher: Endpoint,
    subscribers: Endpoint,
    subs: usize,
    rate: f64,
    secs: f64,
    cpu: &dyn Fn() -> f64,
    label: &str,
) -> anyhow::Result<StepResult> {
    let layout = fanout_layout(publisher, subscribers, subs);
    let mut load = Load::start(layout, 1).await?;
    let bar = load::bar(label, (rate * secs) as u64 * subs as u64);
    let result = load.run_step(0, Step { rate, secs }, cpu, &bar).await?;
    bar.finish_and_clear();
    load.finish().await;
    Ok(result)
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelsRun {
    pub server: Kind,
    pub channels: usize,
    pub connections: usize,
    pub setup_secs: f64,
    pub step: StepResult,
}

/// M channels with 2 subscribers each, spread over `connections` sockets, at a fixed
/// total publish rate (each publish to the next channel in turn).
pub async fn channels(
    server: &Server,
    channels: usize,
    connections: usize,
    rate: f64,
    secs: f64,
) -> anyhow::Result<ChannelsRun> {
    let connections = connections.max(2);
    let names: Vec<String> = (0..channels).map(|i| channel("ch", i)).collect();
    let mut per_socket = vec![Vec::new(); connections];
    for (i, name) in names.iter().enumerate() {
        // Two distinct sockets per channel.
        per_socket[(2 * i) % connections].push(name.clone());
        per_socket[(2 * i + 1) % connections].push(name.clone());
    }
    let layout = Layout {
        publisher: server.endpoint.clone(),
        subscribers: per_socket
            .into_iter()
            .map(|chs| (server.endpoint.clone(), chs))
            .collect(),
        sources: Vec::new(),
        channels: names,
        fanout: 2,
        batch: 1,
        track: false,
    };
    let setup = Instant::now();
    let mut load = Load::start(layout, 1).await?;
    let setup_secs = setup.elapsed().as_secs_f64();

    let cpu = || server.cpu_seconds();
    let label = format!("{} channels {channels}", server.kind.name());
    let bar = load::bar(&label, (rate * secs) as u64 * 2);
    let step = load.run_step(0, Step { rate, secs }, &cpu, &bar).await?;
    bar.finish_and_clear();
    load.finish().await;
    Ok(ChannelsRun {
        server: server.kind,
        channels,
        connections,
        setup_secs,
        step,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleRun {
    pub server: Kind,
    pub connections: usize,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub bytes_per_connection: f64,
    pub setup_secs: f64,
}

/// Sockets per source address; one address has about 28,000 ephemeral ports, and
/// repeated runs leave the last run's in TIME_WAIT.
const PER_SOURCE: usize = 1_000;
/// How long idle connections settle before memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(3);

/// K idle connections, each subscribed to one of 100 channels; the server's resident
/// memory grows by this much per connection.
pub async fn idle(server: &Server, connections: usize) -> anyhow::Result<IdleRun> {
    // Not 127.0.0.1: its ports (held in TIME_WAIT for a minute after a run) are what
    // the other workloads' sockets come from.
    let sources: Vec<IpAddr> = (0..connections.div_ceil(PER_SOURCE))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + i as u8)))
        .collect();
    let rss_before_bytes = server.rss_bytes();
    let setup = Instant::now();
    let bar = load::bar(&format!("{} idle", server.kind.name()), connections as u64);
    let sockets: Vec<wire::Ws> =
        futures_util::StreamExt::collect::<Vec<_>>(futures_util::StreamExt::buffer_unordered(
            futures_util::stream::iter((0..connections).map(|i| {
                let endpoint = server.endpoint.clone();
                let source = sources[i % sources.len()];
                let bar = bar.clone();
                async move {
                    let ws = wire::connect(&endpoint, &[channel("idle", i % 100)], Some(source))
                        .await
                        .with_context(|| format!("idle connection {i}"));
                    bar.inc(1);
                    ws
                }
            })),
            128,
        ))
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    bar.finish_and_clear();
    let setup_secs = setup.elapsed().as_secs_f64();

    // Each socket keeps being read, so pings are answered while memory settles.
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                while let Some(Ok(frame)) = futures_util::StreamExt::next(&mut ws).await {
                    if let tokio_tungstenite::tungstenite::Message::Binary(b) = &frame {
                        if wire::is_nats_ping(b) {
                            let _ = futures_util::SinkExt::send(&mut ws, wire::nats_pong()).await;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(IDLE_SETTLE).await;
    let rss_after_bytes = server.rss_bytes();
    for reader in &readers {
        reader.abort();
    }
    Ok(IdleRun {
        server: server.kind,
        connections,
        rss_before_bytes,
        rss_after_bytes,
        bytes_per_connection: rss_after_bytes.saturating_sub(rss_before_bytes) as f64
            / connections as f64,
        setup_secs,
    })
}

/// A channel whose master (in this node's view) is `master`, found by asking the
/// node's placement endpoint about candidate names.
pub async fn channel_mastered_by(
    via: &servers::DescribedNode,
    master: &str,
    prefix: &str,
) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    for i in 0..500 {
        let name = channel(prefix, i);
        let url = format!("http://{}/health/placement/{name}", via.client);
        let body: serde_json::Value = http.get(&url).send().await?.json().await?;
        if body["owners"][0].as_str() == Some(master) {
            return Ok(name);
        }
    }
    bail!("no channel among 500 candidates is mastered by {master}")
}

#[derive(Debug, Clone, Serialize)]
pub struct MeshRun {
    pub subscribers: usize,
    pub rate: f64,
    pub one_node: StepResult,
    pub three_nodes: StepResult,
    pub p99_added_ms: f64,
}

/// Publisher, master and subscribers on three different nodes of a 3-node region,
/// compared with everything on one node, at the same light load.
pub async fn mesh(opts: &ServerOpts, subs: usize, rate: f64, secs: f64) -> anyhow::Result<MeshRun> {
    let one = opts.start(Kind::Starling).await?;
    let cpu = || one.cpu_seconds();
    let one_node = fanout_fixed(
        one.endpoint.clone(),
        one.endpoint.clone(),
        subs,
        rate,
        secs,
        &cpu,
        "mesh: one node",
    )
    .await?;
    drop(one);

    let region = Region::start(opts, "local", 3).await?;
    let nodes: Vec<_> = region.nodes().cloned().collect();
    anyhow::ensure!(nodes.len() == 3, "expected 3 nodes, got {}", nodes.len());
    let msgpack = opts.msgpack();
    let name = channel_mastered_by(&nodes[0], &nodes[1].id, "mesh").await?;
    let layout = Layout {
        publisher: region.endpoint(&nodes[0], msgpack)?,
        subscribers: (0..subs)
            .map(|_| Ok((region.endpoint(&nodes[2], msgpack)?, vec![name.clone()])))
            .collect::<anyhow::Result<_>>()?,
        sources: Vec::new(),
        channels: vec![name],
        fanout: subs as u64,
        batch: FANOUT_BATCH,
        track: false,
    };
    let mut load = Load::start(layout, 1).await?;
    let cpu = || region.cpu_seconds();
    let bar = load::bar("mesh: three nodes", (rate * secs) as u64 * subs as u64);
    let three_nodes = load.run_step(0, Step { rate, secs }, &cpu, &bar).await?;
    bar.finish_and_clear();
    load.finish().await;

    Ok(MeshRun {
        subscribers: subs,
        rate,
        p99_added_ms: three_nodes.p99_ms - one_node.p99_ms,
        one_node,
        three_nodes,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverRun {
    pub rate: f64,
    pub killed_node: String,
    pub published: u64,
    pub acked: u64,
    pub nacked: u64,
    /// ACKed messages the subscriber never received.
    pub lost: u64,
    pub duplicates: u64,
    /// Longest time without any ACK, around the kill.
    pub ack_gap_ms: f64,
    /// From the kill to the first ACK of a publish sent after it.
    pub recovery_ms: f64,
}

/// Steady publishing while the channel master's node is SIGKILLed.
pub async fn failover(
    opts: &ServerOpts,
    rate: f64,
    before: Duration,
    after: Duration,
) -> anyhow::Result<FailoverRun> {
    let region = Region::start(opts, "local", 3).await?;
    let nodes: Vec<_> = region.nodes().cloned().collect();
    anyhow::ensure!(nodes.len() == 3, "expected 3 nodes, got {}", nodes.len());
    let msgpack = opts.msgpack();
    let name = channel_mastered_by(&nodes[0], &nodes[1].id, "failover").await?;
    let layout = Layout {
        publisher: region.endpoint(&nodes[0], msgpack)?,
        subscribers: vec![(region.endpoint(&nodes[2], msgpack)?, vec![name.clone()])],
        sources: Vec::new(),
        channels: vec![name],
        fanout: 1,
        batch: 1,
        track: true,
    };
    let mut load = Load::start(layout, 1).await?;

    let start = Instant::now();
    let mut until = || start.elapsed() >= before;
    let mut published = load.steady(0, rate, &mut until).await?;
    let kill_ns = crate::payload::now_ns();
    servers::kill(nodes[1].pid);
    let killed = Instant::now();
    let mut until = || killed.elapsed() >= after;
    published += load.steady(0, rate, &mut until).await?;

    // Everything ACKed should arrive; wait for it, boundedly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answered = {
            let acks = load.acks();
            acks.acked + acks.nacked
        };
        if answered >= published || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked_now = load.acks().acked;
    load.wait_delivered(0, acked_now, Duration::from_secs(5))
        .await;

    let (acked, nacked, log) = {
        let acks = load.acks();
        (acks.acked, acks.nacked, acks.log.clone())
    };
    let published_log = load.published.clone();
    let seen = load.finish().await.pop().unwrap_or_default();
    Ok(failover_accounting(
        rate,
        nodes[1].id.clone(),
        published,
        (acked, nacked, &log),
        &published_log,
        &seen,
        kill_ns,
    ))
}

fn failover_accounting(
    rate: f64,
    killed_node: String,
    published: u64,
    (acked, nacked, log): (u64, u64, &[(u64, i64, i64)]),
    published_log: &[(i64, u64, u64, u64)],
    seen: &[u64],
    kill_ns: u64,
) -> FailoverRun {
    let mut seen_sorted = seen.to_vec();
    seen_sorted.sort_unstable();
    let before_dedup = seen_sorted.len();
    seen_sorted.dedup();
    let duplicates = (before_dedup - seen_sorted.len()) as u64;

    // msgSerial → (first seq, count); an ACK covers `count` serials from `serial`.
    let by_serial: std::collections::HashMap<i64, (u64, u64)> = published_log
        .iter()
        .map(|&(serial, seq, n, _)| (serial, (seq, n)))
        .collect();
    let mut lost = 0;
    for &(_, serial, count) in log {
        for s in serial..serial + count {
            if let Some(&(seq, n)) = by_serial.get(&s) {
                lost += (seq..seq + n)
                    .filter(|q| seen_sorted.binary_search(q).is_err())
                    .count() as u64;
            }
        }
    }

    let mut gap = 0u64;
    for pair in log.windows(2) {
        gap = gap.max(pair[1].0.saturating_sub(pair[0].0));
    }
    // Recovery: from the kill to the ACK of the first publish sent after it (ACKs
    // come in msgSerial order).
    let first_after = published_log
        .iter()
        .find(|p| p.3 > kill_ns)
        .map(|p| p.0)
        .and_then(|serial| log.iter().find(|&&(_, s, c)| s + c > serial))
        .map(|&(t, _, _)| t);
    FailoverRun {
        rate,
        killed_node,
        published,
        acked,
        nacked,
        lost,
        duplicates,
        ack_gap_ms: gap as f64 / 1e6,
        recovery_ms: first_after.map_or(-1.0, |t| t.saturating_sub(kill_ns) as f64 / 1e6),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FederationRun {
    pub subscribers: usize,
    pub rate: f64,
    /// Channel homed in the subscriber's region A.
    pub homed_at_subscriber: StepResult,
    /// Channel homed in the publisher's region B.
    pub homed_at_publisher: StepResult,
}

/// Subscribers in region A, the publisher in region B; the channel homed in A, then in
/// B. No delay is injected between the regions (no network namespaces here).
pub async fn federation(
    opts: &ServerOpts,
    subs: usize,
    rate: f64,
    secs: f64,
) -> anyhow::Result<FederationRun> {
    let region = Region::start(opts, "eu,us", 1).await?;
    let node = |name: &str| {
        region
            .describe
            .regions
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.nodes.first())
            .cloned()
            .with_context(|| format!("region {name} has no node"))
    };
    let (a, b) = (node("eu")?, node("us")?);
    let msgpack = opts.msgpack();
    let (ea, eb) = (region.endpoint(&a, msgpack)?, region.endpoint(&b, msgpack)?);
    let cpu = || region.cpu_seconds();

    let mut results = Vec::new();
    for (home, label) in [
        (&ea, "federation: homed at subscriber"),
        (&eb, "federation: homed at publisher"),
    ] {
        let name = channel("fed", results.len());
        // The first region to sequence a channel becomes its home.
        home_channel(home, &name).await?;
        let layout = fanout_on(eb.clone(), ea.clone(), subs, name);
        let mut load = Load::start(layout, 1).await?;
        let bar = load::bar(label, (rate * secs) as u64 * subs as u64);
        results.push(load.run_step(0, Step { rate, secs }, &cpu, &bar).await?);
        bar.finish_and_clear();
        load.finish().await;
    }
    let homed_at_publisher = results.pop().expect("two results");
    let homed_at_subscriber = results.pop().expect("two results");
    Ok(FederationRun {
        subscribers: subs,
        rate,
        homed_at_subscriber,
        homed_at_publisher,
    })
}

/// Publishes once through `endpoint` and waits for the ACK, so the channel is homed in
/// that endpoint's region.
async fn home_channel(endpoint: &Endpoint, name: &str) -> anyhow::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    let wire::Proto::Ably { msgpack, .. } = endpoint.proto else {
        bail!("homing needs an Ably endpoint");
    };
    let mut ws = wire::connect(endpoint, &[], None).await?;
    let mut publisher = wire::Publisher::new(endpoint.proto.clone());
    let stamp = crate::payload::Stamp {
        step: 255,
        sent_ns: 0,
        seq: 0,
    };
    ws.send(publisher.frame(name, &[crate::payload::make(stamp)]))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await?;
        let Some(Ok(frame)) = frame else {
            bail!("socket ended before the homing publish was answered");
        };
        match wire::ably_reply(&frame.into_data(), msgpack) {
            wire::Reply::Ack { .. } => return Ok(()),
            wire::Reply::Nack { .. } => bail!("the homing publish was refused"),
            wire::Reply::Other => {}
        }
    }
    bail!("no ACK for the homing publish")
}
