//! `starling-bench`: load over WebSocket against Starling, nats-server and a bare
//! broadcast server, side by side (docs/benchmarks.md).

mod bare;
mod compare;
mod load;
mod payload;
mod report;
mod servers;
mod wire;
mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::load::StepResult;
use crate::servers::{Kind, ServerOpts};
use crate::workloads::Search;

#[derive(Debug, Parser)]
#[command(
    name = "starling-bench",
    about = "Starling benchmarks side by side with nats-server and a bare broadcast server"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    servers: ServerOpts,
    /// Where JSON results and SVG plots go.
    #[arg(long, global = true, default_value = "bench-results")]
    out: PathBuf,
    /// Generator worker threads (it shares the machine with the server).
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the bare broadcast server (every frame to every other socket).
    Bare {
        #[arg(long, default_value = "127.0.0.1:4290")]
        listen: SocketAddr,
    },
    /// 1 publisher, N subscribers on one channel, rising rates (or one fixed rate).
    Fanout {
        #[arg(long, default_value = "starling")]
        server: Kind,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// One step at this rate (msgs/s) instead of a rising search.
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds per step.
        #[arg(long)]
        secs: Option<f64>,
        #[arg(long)]
        quick: bool,
    },
    /// M channels, 2 subscribers each, fixed total rate: CPU per delivered message.
    Channels {
        #[arg(long, default_value = "starling")]
        server: Kind,
        #[arg(long, value_delimiter = ',', default_value = "10,1000")]
        channels: Vec<usize>,
        #[arg(long, default_value_t = 200)]
        sockets: usize,
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// K idle connections: resident memory per connection.
    Idle {
        #[arg(long, default_value = "starling")]
        server: Kind,
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        connections: Vec<usize>,
    },
    /// Publisher, master and subscribers on three nodes vs one node.
    Mesh {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// Steady publishing while the master's node is SIGKILLed.
    Failover {
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs_after: f64,
    },
    /// Subscribers in region eu, publisher in region us.
    Federation {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// Every workload, servers alternating, medians of per-run ratios.
    Compare(compare::CompareArgs),
    /// A few seconds of every protocol path against Starling and the bare server, for
    /// CI (asserts that it works, nothing about speed).
    Smoke,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Cmd::Bare { .. } = cli.command {
        // The bare server's threads follow TOKIO_WORKER_THREADS like region-node's.
    } else {
        builder.worker_threads(cli.threads.max(1));
    }
    builder.build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = cli.servers.clone();
    let out = cli.out.clone();
    match cli.command {
        Cmd::Bare { listen } => bare::serve(listen).await,
        Cmd::Fanout {
            server,
            subscribers,
            rate,
            secs,
            quick,
        } => fanout(&opts, server, subscribers, rate, secs, quick, &out).await,
        Cmd::Channels {
            server,
            channels,
            sockets,
            rate,
            secs,
        } => {
            let mut runs = Vec::new();
            for m in channels {
                let s = opts.start(server).await?;
                runs.push(workloads::channels(&s, m, sockets, rate, secs).await?);
            }
            let rows = runs
                .iter()
                .map(|r| {
                    let mut row = vec![r.channels.to_string(), format!("{:.1}", r.setup_secs)];
                    row.extend(step_row(&r.step));
                    row
                })
                .collect::<Vec<_>>();
            print_steps(&["channels", "setup s"], &rows);
            report::write_json(&out.join("channels.json"), &runs)
        }
        Cmd::Idle {
            server,
            connections,
        } => {
            let mut runs = Vec::new();
            for k in connections {
                let s = opts.start(server).await?;
                runs.push(workloads::idle(&s, k).await?);
            }
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|r| {
                    vec![
                        r.server.name().into(),
                        report::thousands(r.connections as f64),
                        report::thousands(r.rss_before_bytes as f64),
                        report::thousands(r.rss_after_bytes as f64),
                        format!("{:.0}", r.bytes_per_connection),
                    ]
                })
                .collect();
            let headers = [
                "server",
                "connections",
                "RSS before",
                "RSS after",
                "bytes/conn",
            ];
            println!("{}", report::table(&headers, &rows));
            report::write_json(&out.join("idle.json"), &runs)
        }
        Cmd::Mesh {
            subscribers,
            rate,
            secs,
        } => {
            let run = workloads::mesh(&opts, subscribers, rate, secs).await?;
            let rows = vec![
                labelled("one node", &run.one_node),
                labelled("three nodes", &run.three_nodes),
            ];
            print_steps(&["layout"], &rows);
            println!("p99 added by the mesh: {:.2} ms", run.p99_added_ms);
            report::write_json(&out.join("mesh.json"), &run)
        }
        Cmd::Failover { rate, secs_after } => {
            let after = Duration::from_secs_f64(secs_after);
            let run = workloads::failover(&opts, rate, Duration::from_secs(3), after).await?;
            println!("{run:#?}");
            report::write_json(&out.join("failover.json"), &run)
        }
        Cmd::Federation {
            subscribers,
            rate,
            secs,
        } => {
            let run = workloads::federation(&opts, subscribers, rate, secs).await?;
            let rows = vec![
                labelled("homed at subscriber (eu)", &run.homed_at_subscriber),
                labelled("homed at publisher (us)", &run.homed_at_publisher),
            ];
            print_steps(&["channel"], &rows);
            report::write_json(&out.join("federation.json"), &run)
        }
        Cmd::Compare(args) => compare::run(args, opts, out).await,
        Cmd::Smoke => smoke(&opts, &out).await,
    }
}

const STEP_HEADERS: [&str; 11] = [
    "offered/s",
    "sent",
    "delivered",
    "delivery",
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "server µs/deliv",
    "generator CPU s",
    "sustained",
];

fn step_row(s: &StepResult) -> Vec<String> {
    vec![
        report::thousands(s.offered_rate),
        report::thousands(s.sent as f64),
        report::thousands(s.delivered as f64),
        format!("{:.4}", s.delivery),
        report::thousands(s.deliveries_per_sec),
        format!("{:.3}", s.p50_ms),
        format!("{:.3}", s.p99_ms),
        format!("{:.3}", s.p999_ms),
        format!("{:.3}", s.server_us_per_delivery),
        format!("{:.2}", s.generator_cpu_s),
        if s.sustained { "yes" } else { "no" }.into(),
    ]
}

fn labelled(label: &str, s: &StepResult) -> Vec<String> {
    let mut row = vec![label.to_owned()];
    row.extend(step_row(s));
    row
}

fn print_steps(prefix: &[&str], rows: &[Vec<String>]) {
    let mut headers: Vec<&str> = prefix.to_vec();
    headers.extend(STEP_HEADERS);
    println!("{}", report::table(&headers, rows));
}

async fn fanout(
    opts: &ServerOpts,
    kind: Kind,
    subs: usize,
    rate: Option<f64>,
    secs: Option<f64>,
    quick: bool,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let server = opts.start(kind).await?;
    if let Some(rate) = rate {
        let cpu = || server.cpu_seconds();
        let e = server.endpoint.clone();
        let step = workloads::fanout_fixed(
            e.clone(),
            e,
            subs,
            rate,
            secs.unwrap_or(3.0),
            &cpu,
            "fanout",
        )
        .await?;
        print_steps(&[], &[step_row(&step)]);
        return report::write_json(
            &out.join(format!("fanout-{}-{subs}.json", kind.name())),
            &step,
        );
    }
    let mut search = Search::for_subscribers(subs, quick);
    if let Some(secs) = secs {
        search.step_secs = secs;
    }
    let run = workloads::fanout_search(&server, subs, search).await?;
    print_steps(&[], &run.steps.iter().map(step_row).collect::<Vec<_>>());
    println!(
        "{} sustained {} msgs/s to {subs} subscribers ({} deliveries/s)",
        kind.name(),
        report::thousands(run.sustained_rate),
        report::thousands(run.sustained_deliveries_per_sec)
    );
    report::write_json(
        &out.join(format!("fanout-{}-{subs}.json", kind.name())),
        &run,
    )
}

/// CI's proof that the tool works: short runs of each protocol path it can reach
/// without nats-server, checked for deliveries (not speed).
async fn smoke(opts: &ServerOpts, out: &std::path::Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for kind in [Kind::Starling, Kind::Bare] {
        let server = opts.start(kind).await?;
        let cpu = || server.cpu_seconds();
        let e = server.endpoint.clone();
        let step =
            workloads::fanout_fixed(e.clone(), e, 20, 200.0, 1.0, &cpu, "smoke fanout").await?;
        anyhow::ensure!(
            step.delivered == step.expected && step.expected > 0,
            "{}: {} of {} deliveries arrived",
            kind.name(),
            step.delivered,
            step.expected
        );
        let mut row = vec![kind.name().to_owned(), "fanout".to_owned()];
        row.extend(step_row(&step));
        rows.push(row);

        let idle = workloads::idle(&server, 50).await?;
        anyhow::ensure!(idle.rss_after_bytes > 0, "{}: no RSS read", kind.name());
        if kind == Kind::Starling {
            let run = workloads::channels(&server, 20, 8, 200.0, 1.0).await?;
            anyhow::ensure!(
                run.step.delivered == run.step.expected,
                "channels: {} of {} deliveries arrived",
                run.step.delivered,
                run.step.expected
            );
            let mut row = vec![kind.name().to_owned(), "channels".to_owned()];
            row.extend(step_row(&run.step));
            rows.push(row);
        }
    }
    print_steps(&["server", "workload"], &rows);
    report::svg(
        &out.join("smoke.svg"),
        &report::Plot {
            title: "smoke",
            x_label: "x",
            y_label: "y",
            log_y: true,
        },
        &[report::Series {
            label: "line".into(),
            points: vec![(1.0, 1.0), (2.0, 4.0)],
        }],
    )?;
    println!("smoke run passed");
    Ok(())
}
