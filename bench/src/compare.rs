//! `compare`: every workload against Starling and its peers, alternately (A B C, A B
//! C, ...), each run on freshly started servers, reported as medians of per-run ratios
//! with their min–max spread.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::load::StepResult;
use crate::report::{self, Plot, Series, Spread};
use crate::servers::{Kind, ServerOpts};
use crate::workloads::{self, ChannelsRun, FanoutRun, IdleRun, Search};

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Runs of each workload per server (alternating servers).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Shorter steps and a coarser rate search.
    #[arg(long)]
    pub quick: bool,
    /// Workloads to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fanout,light,idle,channels,threads,mesh,failover,federation"
    )]
    pub workloads: Vec<String>,
    /// Subscriber counts for fanout.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub subscribers: Vec<usize>,
    /// Idle connection counts.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,15000")]
    pub idle: Vec<usize>,
    /// Channel counts for the channels workload.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,100,1000,10000,100000"
    )]
    pub channels: Vec<usize>,
    /// Servers compared with Starling.
    #[arg(long, value_delimiter = ',', default_value = "nats,bare")]
    pub peers: Vec<Kind>,
}

#[derive(Debug, Default, Serialize)]
struct Results {
    fanout: Vec<FanoutRun>,
    half_load: Vec<(Kind, usize, StepResult)>,
    light: Vec<(Kind, StepResult)>,
    idle: Vec<IdleRun>,
    channels: Vec<ChannelsRun>,
    threads: Vec<(usize, StepResult)>,
    mesh: Vec<workloads::MeshRun>,
    failover: Vec<workloads::FailoverRun>,
    federation: Vec<workloads::FederationRun>,
    summary: Vec<Vec<String>>,
}

const SUMMARY: [&str; 4] = ["measure", "starling", "peer", "ratio median (min–max)"];

/// Light load: 1,000 msgs/s to 100 subscribers.
const LIGHT_RATE: f64 = 1_000.0;
const LIGHT_SUBS: usize = 100;
/// Channels workload: total publishes per second and subscriber sockets.
const CHANNELS_RATE: f64 = 2_000.0;
const CHANNELS_SOCKETS: usize = 200;
/// Worker-thread comparison: a load well below saturation.
const THREADS_RATE: f64 = 2_000.0;
const THREADS_SUBS: usize = 100;

pub async fn run(args: CompareArgs, opts: ServerOpts, out: PathBuf) -> anyhow::Result<()> {
    let mut results = Results::default();
    let mut servers = vec![Kind::Starling];
    servers.extend(args.peers.iter().copied().filter(|k| *k != Kind::Starling));
    let secs = if args.quick { 2.0 } else { 5.0 };
    let wants = |name: &str| args.workloads.iter().any(|w| w == name);

    if wants("fanout") {
        let outcome: anyhow::Result<()> = async {
            for &subs in &args.subscribers {
                fanout(&args, &opts, &servers, subs, secs, &mut results).await?;
            }
            plot_fanout(&results, &out)?;
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            failed(&mut results, "fanout", &error);
        }
        save(&results, &out)?;
    }
    if wants("light") {
        let outcome: anyhow::Result<()> = async {
            light(&args, &opts, &servers, secs, &mut results).await?;
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            failed(&mut results, "light", &error);
        }
        save(&results, &out)?;
    }
    if wants("idle") {
        let outcome: anyhow::Result<()> = async {
            idle(&args, &opts, &servers, &mut results).await?;
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            failed(&mut results, "idle", &error);
        }
        save(&results, &out)?;
    }
    if wants("channels") {
        let outcome: anyhow::Result<()> = async {
            channels(&args, &opts, &servers, secs, &mut results).await?;
            plot_channels(&results, &out)?;
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            failed(&mut results, "channels", &error);
        }
        save(&results, &out)?;
    }
    if wants("threads") {
        let outcome: anyhow::Result<()> = async {
            threads(&args, &opts, secs, &mut results).await?;
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            failed(&mut results, "threads", &error);
        }
        save(&results, &out)?;
    }
    if wants("mesh") {
        let outcome: anyhow::Result<()> = async {
            let run = workloads::mesh(&opts, LIGHT_SUBS, LIGHT_RATE, secs).await?;
            results.summary.push(vec![
                format!("mesh p99, {LIGHT_SUBS} subs @ {LIGHT_RATE}/s (3 nodes vs 1)"),
                format!(
                    "{:.2} ms{}",
                    run.three_nodes.p99_ms,
                    shortfall(&run.three_nodes)
                ),
                format!(
                    "{:.2} ms (one node){}",
                    run.one_node.p99_ms,
                    shortfall(&run.one_node)
                ),
                format!("+{:.2} ms", run.p99_added_ms),
            ]);
            results.mesh.push(run);
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            failed(&mut results, "mesh", &error);
        }
        save(&results, &out)?;
    }
    if wants("failover") {
        let outcome: anyhow::Result<()> = async {
            let run = workloads::failover(
                &opts,
                200.0,
                Duration::from_secs(3),
                Duration::from_secs(if args.quick { 8 } else { 12 }),
            )
            .await?;
            results.summary.push(vec![
                "failover: ACKs resume after the master's node is killed".into(),
                format!(
                    "{:.0} ms (longest ACK gap {:.0} ms)",
                    run.recovery_ms, run.ack_gap_ms
                ),
                format!(
                    "lost {} of {} ACKed, {} NACKed",
                    run.lost, run.acked, run.nacked
                ),
                String::new(),
            ]);
            results.failover.push(run);
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            failed(&mut results, "failover", &error);
        }
        save(&results, &out)?;
    }
    if wants("federation") {
        let outcome: anyhow::Result<()> = async {
            let run = workloads::federation(&opts, LIGHT_SUBS, LIGHT_RATE, secs).await?;
            results.summary.push(vec![
                format!("federation p50/p99, {LIGHT_SUBS} subs @ {LIGHT_RATE}/s, no delay"),
                format!(
                    "homed at subscriber {}",
                    latencies(&run.homed_at_subscriber)
                ),
                format!("homed at publisher {}", latencies(&run.homed_at_publisher)),
                String::new(),
            ]);
            results.federation.push(run);
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            failed(&mut results, "federation", &error);
        }
        save(&results, &out)?;
    }
    println!("{}", report::table(&SUMMARY, &results.summary));
    save(&results, &out)?;
    println!("results in {}", out.display());
    Ok(())
}

/// A workload that could not finish is reported as such; the others still run.
fn failed(results: &mut Results, what: &str, error: &anyhow::Error) {
    eprintln!("{what} failed: {error:#}");
    let reason: String = format!("{error:#}").chars().take(120).collect();
    results.summary.push(vec![
        format!("{what}: failed"),
        reason,
        String::new(),
        String::new(),
    ]);
}

/// Writes what is known so far: a long run that fails later keeps its results.
fn save(results: &Results, out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("summary.md"),
        report::markdown(&SUMMARY, &results.summary),
    )?;
    report::write_json(&out.join("compare.json"), results)
}
/// Ratios of Starling's value to each peer's, run by run.
/// One row of the comparison table: the measure, Starling's median, the peer's, and
/// the median of the per-run ratios with their spread; `show` formats a median.
fn versus(
    measure: String,
    starling: &[f64],
    peer: Kind,
    theirs: &[f64],
    show: impl Fn(f64) -> String,
) -> Vec<String> {
    vec![
        measure,
        show(report::median(starling)),
        format!("{}: {}", peer.name(), show(report::median(theirs))),
        ratios(starling, theirs).show(2),
    ]
}

fn ratios(starling: &[f64], peer: &[f64]) -> Spread {
    let r: Vec<f64> = starling
        .iter()
        .zip(peer)
        .map(|(s, p)| if *p > 0.0 { s / p } else { f64::NAN })
        .collect();
    Spread::of(&r)
}

fn values<T>(items: &[T], f: impl Fn(&T) -> Option<f64>) -> Vec<f64> {
    items.iter().filter_map(f).collect()
}

async fn fanout(
    args: &CompareArgs,
    opts: &ServerOpts,
    servers: &[Kind],
    subs: usize,
    secs: f64,
    results: &mut Results,
) -> anyhow::Result<()> {
    let search = Search::for_subscribers(subs, args.quick);
    for _ in 0..args.runs {
        for &kind in servers {
            let server = opts.start(kind).await?;
            let run = workloads::fanout_search(&server, subs, search).await?;
            eprintln!(
                "fanout {subs}: {} sustained {} msgs/s ({} deliveries/s)",
                kind.name(),
                report::thousands(run.sustained_rate),
                report::thousands(run.sustained_deliveries_per_sec)
            );
            results.fanout.push(run);
        }
    }
    let rates = |kind: Kind| {
        values(&results.fanout, |r| {
            (r.server == kind && r.subscribers == subs).then_some(r.sustained_rate)
        })
    };
    let starling = rates(Kind::Starling);
    for &peer in &servers[1..] {
        let theirs = rates(peer);
        results.summary.push(versus(
            format!("sustained fanout, {subs} subs (deliveries/s)"),
            &starling,
            peer,
            &theirs,
            |rate| report::thousands(rate * subs as f64),
        ));
    }

    // Latency at half of Starling's sustained rate, every server at that same rate.
    let half = report::median(&starling) / 2.0;
    if half.is_nan() || half <= 0.0 {
        return Ok(());
    }
    for _ in 0..args.runs {
        for &kind in servers {
            let server = opts.start(kind).await?;
            let cpu = || server.cpu_seconds();
            let label = format!("{} half load {subs}", kind.name());
            let e = server.endpoint.clone();
            let step =
                workloads::fanout_fixed(e.clone(), e, subs, half, secs, &cpu, &label).await?;
            results.half_load.push((kind, subs, step));
        }
    }
    let p99 = |kind: Kind| {
        values(&results.half_load, |(k, n, s)| {
            (*k == kind && *n == subs).then_some(s.p99_ms)
        })
    };
    for &peer in &servers[1..] {
        let measure = format!(
            "p99 at half of Starling's sustained rate ({} msgs/s), {subs} subs",
            report::thousands(half)
        );
        let (ours, theirs) = (p99(Kind::Starling), p99(peer));
        let row = versus(measure, &ours, peer, &theirs, |ms| format!("{ms:.2} ms"));
        results.summary.push(row);
    }
    Ok(())
}

async fn light(
    args: &CompareArgs,
    opts: &ServerOpts,
    servers: &[Kind],
    secs: f64,
    results: &mut Results,
) -> anyhow::Result<()> {
    for _ in 0..args.runs {
        for &kind in servers {
            let server = opts.start(kind).await?;
            let cpu = || server.cpu_seconds();
            let e = server.endpoint.clone();
            let label = format!("{} light load", kind.name());
            let step =
                workloads::fanout_fixed(e.clone(), e, LIGHT_SUBS, LIGHT_RATE, secs, &cpu, &label)
                    .await?;
            results.light.push((kind, step));
        }
    }
    let pick = |kind: Kind, f: fn(&StepResult) -> f64| {
        values(&results.light, |(k, s)| (*k == kind).then(|| f(s)))
    };
    for &peer in &servers[1..] {
        for (name, f) in [
            ("p50", (|s: &StepResult| s.p50_ms) as fn(&StepResult) -> f64),
            ("p99", |s| s.p99_ms),
        ] {
            let measure = format!("light load {name} ({LIGHT_RATE} msgs/s to {LIGHT_SUBS} subs)");
            let (ours, theirs) = (pick(Kind::Starling, f), pick(peer, f));
            let row = versus(measure, &ours, peer, &theirs, |ms| format!("{ms:.3} ms"));
            results.summary.push(row);
        }
    }
    Ok(())
}

async fn idle(
    args: &CompareArgs,
    opts: &ServerOpts,
    servers: &[Kind],
    results: &mut Results,
) -> anyhow::Result<()> {
    // Idle runs are slow to set up and steady; fewer repetitions say as much.
    let runs = args.runs.min(3);
    for &k in &args.idle {
        for _ in 0..runs {
            for &kind in servers {
                let server = opts.start(kind).await?;
                let run = workloads::idle(&server, k).await?;
                eprintln!(
                    "idle {k}: {} {:.0} bytes per connection",
                    kind.name(),
                    run.bytes_per_connection
                );
                results.idle.push(run);
            }
        }
        let per = |kind: Kind| {
            values(&results.idle, |r| {
                (r.server == kind && r.connections == k).then_some(r.bytes_per_connection)
            })
        };
        for &peer in &servers[1..] {
            let measure = format!(
                "resident memory per idle connection at {}",
                report::thousands(k as f64)
            );
            let (ours, theirs) = (per(Kind::Starling), per(peer));
            let row = versus(measure, &ours, peer, &theirs, |b| format!("{b:.0} B"));
            results.summary.push(row);
        }
    }
    Ok(())
}

async fn channels(
    args: &CompareArgs,
    opts: &ServerOpts,
    servers: &[Kind],
    secs: f64,
    results: &mut Results,
) -> anyhow::Result<()> {
    // The bare server has no channels: it would send everything to everyone.
    let servers: Vec<Kind> = servers
        .iter()
        .copied()
        .filter(|k| *k != Kind::Bare)
        .collect();
    let runs = args.runs.min(3);
    'counts: for &m in &args.channels {
        for _ in 0..runs {
            for &kind in &servers {
                let server = opts.start(kind).await?;
                let outcome =
                    workloads::channels(&server, m, CHANNELS_SOCKETS, CHANNELS_RATE, secs).await;
                let run = match outcome {
                    Ok(run) => run,
                    Err(error) => {
                        // Reported, and the larger counts still run.
                        failed(results, &format!("channels {m} on {}", kind.name()), &error);
                        continue 'counts;
                    }
                };
                eprintln!(
                    "channels {m}: {} {:.2} µs CPU per delivery (setup {:.1} s)",
                    kind.name(),
                    run.step.server_us_per_delivery,
                    run.setup_secs
                );
                results.channels.push(run);
            }
        }
    }
    let cost = |kind: Kind, m: usize| {
        report::median(&values(&results.channels, |r| {
            (r.server == kind && r.channels == m).then_some(r.step.server_us_per_delivery)
        }))
    };
    let first = args.channels.first().copied().unwrap_or(10);
    for &m in &args.channels {
        let starling = cost(Kind::Starling, m);
        for &peer in &servers[1..] {
            results.summary.push(vec![
                format!(
                    "CPU per delivery, {} channels (vs {first})",
                    report::thousands(m as f64)
                ),
                format!(
                    "{starling:.2} µs ({:.2}×)",
                    starling / cost(Kind::Starling, first)
                ),
                format!(
                    "{}: {:.2} µs ({:.2}×)",
                    peer.name(),
                    cost(peer, m),
                    cost(peer, m) / cost(peer, first)
                ),
                format!("{:.2}", starling / cost(peer, m)),
            ]);
        }
    }
    Ok(())
}

async fn threads(
    args: &CompareArgs,
    opts: &ServerOpts,
    secs: f64,
    results: &mut Results,
) -> anyhow::Result<()> {
    for _ in 0..args.runs {
        for threads in [1, 2] {
            let opts = ServerOpts {
                server_threads: Some(threads),
                ..opts.clone()
            };
            let server = opts.start(Kind::Starling).await?;
            let cpu = || server.cpu_seconds();
            let e = server.endpoint.clone();
            let label = format!("starling {threads} worker thread(s)");
            let step = workloads::fanout_fixed(
                e.clone(),
                e,
                THREADS_SUBS,
                THREADS_RATE,
                secs,
                &cpu,
                &label,
            )
            .await?;
            results.threads.push((threads, step));
        }
    }
    let cost = |n: usize| {
        values(&results.threads, |(t, s)| {
            (*t == n).then_some(s.server_us_per_delivery)
        })
    };
    results.summary.push(vec![
        format!("CPU per delivery, 2 vs 1 worker threads ({THREADS_RATE} msgs/s to {THREADS_SUBS} subs)"),
        format!("2 threads: {:.3} µs", report::median(&cost(2))),
        format!("1 thread: {:.3} µs", report::median(&cost(1))),
        ratios(&cost(2), &cost(1)).show(2),
    ]);
    Ok(())
}

/// Deliveries/s and p99 against offered rate, from each server's median run.
fn plot_fanout(results: &Results, out: &std::path::Path) -> anyhow::Result<()> {
    let mut counts: Vec<usize> = results.fanout.iter().map(|r| r.subscribers).collect();
    counts.sort_unstable();
    counts.dedup();
    for subs in counts {
        let mut throughput = Vec::new();
        let mut latency = Vec::new();
        for kind in [Kind::Starling, Kind::Nats, Kind::Bare] {
            let mut runs: Vec<&FanoutRun> = results
                .fanout
                .iter()
                .filter(|r| r.server == kind && r.subscribers == subs)
                .collect();
            if runs.is_empty() {
                continue;
            }
            runs.sort_by(|a, b| a.sustained_rate.total_cmp(&b.sustained_rate));
            let run = runs[runs.len() / 2];
            let mut steps: Vec<&StepResult> = run.steps.iter().collect();
            steps.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
            let x = |s: &StepResult| s.offered_rate * subs as f64;
            throughput.push(Series {
                label: kind.name().into(),
                points: steps.iter().map(|s| (x(s), s.deliveries_per_sec)).collect(),
            });
            for (q, f) in [
                ("p50", (|s: &StepResult| s.p50_ms) as fn(&StepResult) -> f64),
                ("p99", |s| s.p99_ms),
            ] {
                latency.push(Series {
                    label: format!("{} {q}", kind.name()),
                    points: steps.iter().map(|s| (x(s), f(s).max(0.001))).collect(),
                });
            }
        }
        report::svg(
            &out.join(format!("fanout-{subs}-throughput.svg")),
            &Plot {
                title: &format!("Fanout to {subs} subscribers: delivered vs offered"),
                x_label: "offered deliveries/s",
                y_label: "delivered/s",
                log_y: false,
            },
            &throughput,
        )?;
        report::svg(
            &out.join(format!("fanout-{subs}-latency.svg")),
            &Plot {
                title: &format!("Fanout to {subs} subscribers: latency vs offered load"),
                x_label: "offered deliveries/s",
                y_label: "ms (log)",
                log_y: true,
            },
            &latency,
        )?;
    }
    Ok(())
}

fn plot_channels(results: &Results, out: &std::path::Path) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for kind in [Kind::Starling, Kind::Nats] {
        let mut counts: Vec<usize> = results.channels.iter().map(|r| r.channels).collect();
        counts.sort_unstable();
        counts.dedup();
        let points: Vec<(f64, f64)> = counts
            .iter()
            .filter_map(|&m| {
                let v = values(&results.channels, |r| {
                    (r.server == kind && r.channels == m).then_some(r.step.server_us_per_delivery)
                });
                (!v.is_empty()).then(|| ((m as f64).log10(), report::median(&v)))
            })
            .collect();
        if !points.is_empty() {
            series.push(Series {
                label: kind.name().into(),
                points,
            });
        }
    }
    report::svg(
        &out.join("channels-cpu.svg"),
        &Plot {
            title: "Server CPU per delivered message vs channel count",
            x_label: "log10(channels)",
            y_label: "µs CPU per delivery",
            log_y: false,
        },
        &series,
    )
}

/// p50/p99 of a step, with its delivery when that fell short: latencies of messages
/// that never arrived are no latencies at all.
fn latencies(step: &StepResult) -> String {
    format!(
        "{:.2}/{:.2} ms{}",
        step.p50_ms,
        step.p99_ms,
        shortfall(step)
    )
}

/// " (delivered 12.5%)" when a step lost messages, else nothing.
fn shortfall(step: &StepResult) -> String {
    if step.delivery >= 0.999 {
        return String::new();
    }
    format!(" (delivered {:.1}%)", step.delivery * 100.0)
}
