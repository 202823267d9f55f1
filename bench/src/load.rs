//! The load engine shared by every message workload: subscriber sockets that count and
//! time what they receive, one open-loop publisher, and steps of fixed offered rates.
//!
//! Cheap on purpose, because it shares the machine's cores with the server: one task
//! per socket, no protocol decoding on the receive path (payloads are found by their
//! marker), per-task buffers of latencies merged into shared histograms only now and
//! then, and no shared counter touched per frame.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::payload::{self, Stamp};
use crate::wire::{self, Endpoint, Proto, Reply, Ws};

/// Most steps one run may have (the step number travels in one payload byte).
pub const MAX_STEPS: usize = 256;
/// Latencies a subscriber buffers before merging them into the shared histograms.
const LOCAL_BUFFER: usize = 2048;
/// Sockets opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 32;
/// How long the deliveries of a step may trail its last publish.
const SETTLE: Duration = Duration::from_secs(2);

/// What "sustained" means (benchmarks.md).
pub const SUSTAINED_DELIVERY: f64 = 0.999;
pub const SUSTAINED_P99_MS: f64 = 25.0;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Step {
    /// Offered messages per second (publishes, not deliveries).
    pub rate: f64,
    pub secs: f64,
}

/// Who publishes and who subscribes to what.
pub struct Layout {
    pub publisher: Endpoint,
    /// Each subscriber socket: its server and its channels.
    pub subscribers: Vec<(Endpoint, Vec<String>)>,
    /// Source addresses subscriber sockets are spread over (empty: the default).
    pub sources: Vec<IpAddr>,
    /// Channels the publisher goes through in turn.
    pub channels: Vec<String>,
    /// Subscribers of each channel: the deliveries one message should make.
    pub fanout: u64,
    /// Most messages per publish frame when several are due at once.
    pub batch: usize,
    /// Remember every sequence number received (for loss accounting).
    pub track: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StepResult {
    pub offered_rate: f64,
    pub secs: f64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub delivery: f64,
    /// Deliveries per second over the step's publishing time.
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// How far the publisher fell behind its schedule (a generator limit when large).
    pub publisher_lag_ms: f64,
    pub server_cpu_s: f64,
    pub generator_cpu_s: f64,
    /// Server CPU microseconds per delivered message.
    pub server_us_per_delivery: f64,
    pub sustained: bool,
    pub subscribers_lost: u64,
}

struct Shared {
    delivered: Vec<AtomicU64>,
    histograms: Vec<Mutex<Histogram<u64>>>,
    /// Subscriber sockets that ended before the run did.
    lost: AtomicU64,
}

impl Shared {
    fn new(steps: usize) -> Self {
        Shared {
            delivered: (0..steps).map(|_| AtomicU64::new(0)).collect(),
            histograms: (0..steps).map(|_| Mutex::new(histogram())).collect(),
            lost: AtomicU64::new(0),
        }
    }
}

/// Nanoseconds, 1 µs to 100 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Signals to subscriber tasks: merge your buffers (a new number), or stop.
const STOP: u64 = u64::MAX;

/// What the publisher's socket was told back (Ably only).
#[derive(Debug, Default)]
pub struct Acks {
    pub acked: u64,
    pub nacked: u64,
    /// (time, msgSerial, count) of every ACK, when tracking.
    pub log: Vec<(u64, i64, i64)>,
}

pub struct Load {
    shared: Arc<Shared>,
    signal: watch::Sender<u64>,
    subscribers: Vec<JoinHandle<Vec<u64>>>,
    sink: SplitSink<Ws, Message>,
    publisher: wire::Publisher,
    acks: Arc<Mutex<Acks>>,
    reader: JoinHandle<()>,
    channels: Vec<String>,
    fanout: u64,
    batch: usize,
    next_seq: u64,
    /// (msgSerial, first sequence number, messages, send time) of every publish,
    /// when tracking.
    pub published: Vec<(i64, u64, u64, u64)>,
    track: bool,
}

impl Load {
    /// Connects every subscriber (each confirmed subscribed), then the publisher.
    pub async fn start(layout: Layout, steps: usize) -> anyhow::Result<Load> {
        anyhow::ensure!(steps <= MAX_STEPS, "at most {MAX_STEPS} steps");
        let shared = Arc::new(Shared::new(steps));
        let (signal, _) = watch::channel(0u64);

        let sockets = connect_all(&layout.subscribers, &layout.sources).await?;
        let nats = layout.publisher.proto == Proto::Nats;
        let subscribers = sockets
            .into_iter()
            .map(|ws| {
                let shared = shared.clone();
                let signal = signal.subscribe();
                tokio::spawn(subscriber(ws, shared, signal, nats, layout.track))
            })
            .collect();

        let ws = wire::connect(&layout.publisher, &[], None)
            .await
            .context("connecting the publisher")?;
        let (sink, source) = ws.split();
        let acks = Arc::new(Mutex::new(Acks::default()));
        let reader = tokio::spawn(read_replies(
            source,
            layout.publisher.proto.clone(),
            acks.clone(),
            layout.track,
        ));

        Ok(Load {
            shared,
            signal,
            subscribers,
            sink,
            publisher: wire::Publisher::new(layout.publisher.proto.clone()),
            acks,
            reader,
            channels: layout.channels,
            fanout: layout.fanout,
            batch: layout.batch.max(1),
            next_seq: 0,
            published: Vec::new(),
            track: layout.track,
        })
    }

    pub fn acks(&self) -> std::sync::MutexGuard<'_, Acks> {
        self.acks.lock().expect("acks lock")
    }

    /// Runs one step at its offered rate, waits for its deliveries to settle, and
    /// reports it. `server_cpu` reads the server's CPU seconds so far.
    pub async fn run_step(
        &mut self,
        index: usize,
        step: Step,
        server_cpu: &dyn Fn() -> f64,
        progress: &indicatif::ProgressBar,
    ) -> anyhow::Result<StepResult> {
        let cpu_before = (server_cpu(), crate::servers::self_cpu_seconds());
        let started = Instant::now();
        let (sent, lag) = self.publish(index, step, progress).await?;
        let secs = started.elapsed().as_secs_f64();
        let expected = sent * self.fanout;
        self.settle(index, expected, progress).await;
        let cpu = (
            server_cpu() - cpu_before.0,
            crate::servers::self_cpu_seconds() - cpu_before.1,
        );
        Ok(self.result(index, step, (sent, expected, secs, lag), cpu))
    }

    fn result(
        &self,
        index: usize,
        step: Step,
        (sent, expected, secs, lag): (u64, u64, f64, f64),
        (server_cpu_s, generator_cpu_s): (f64, f64),
    ) -> StepResult {
        let delivered = self.shared.delivered[index].load(Ordering::Relaxed);
        let hist = self.shared.histograms[index]
            .lock()
            .expect("histogram lock");
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
        let delivery = if expected == 0 {
            1.0
        } else {
            delivered as f64 / expected as f64
        };
        let p99_ms = ms(0.99);
        StepResult {
            offered_rate: step.rate,
            secs,
            sent,
            expected,
            delivered,
            delivery,
            deliveries_per_sec: delivered as f64 / secs.max(1e-9),
            p50_ms: ms(0.5),
            p99_ms,
            p999_ms: ms(0.999),
            max_ms: hist.max() as f64 / 1e6,
            publisher_lag_ms: lag * 1e3,
            server_cpu_s,
            generator_cpu_s,
            server_us_per_delivery: server_cpu_s * 1e6 / (delivered.max(1) as f64),
            sustained: delivery >= SUSTAINED_DELIVERY && p99_ms < SUSTAINED_P99_MS,
            subscribers_lost: self.shared.lost.load(Ordering::Relaxed),
        }
    }

    /// Publishes `step.rate × step.secs` messages on schedule (open loop: what is due
    /// is sent whether or not earlier messages were delivered). Returns how many were
    /// sent and the worst lag behind schedule, in seconds.
    async fn publish(
        &mut self,
        index: usize,
        step: Step,
        progress: &indicatif::ProgressBar,
    ) -> anyhow::Result<(u64, f64)> {
        let total = (step.rate * step.secs).round().max(1.0) as u64;
        let start = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut sent = 0u64;
        let mut worst_lag = 0f64;
        let mut next_channel = 0usize;
        let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(self.batch);
        let mut last_progress = Instant::now();

        while sent < total {
            ticker.tick().await;
            let elapsed = start.elapsed().as_secs_f64();
            let due = ((elapsed * step.rate) as u64 + 1).min(total);
            if due > sent + 1 {
                worst_lag = worst_lag.max((due - sent - 1) as f64 / step.rate);
            }
            while sent < due {
                let n = (due - sent).min(self.batch as u64);
                let sent_ns = payload::now_ns();
                payloads.clear();
                for i in 0..n {
                    let stamp = Stamp {
                        step: index as u8,
                        sent_ns,
                        seq: self.next_seq + i,
                    };
                    payloads.push(payload::make(stamp));
                }
                let channel = &self.channels[next_channel % self.channels.len()];
                next_channel += 1;
                if self.track {
                    let serial = self.publisher.next_serial();
                    self.published.push((serial, self.next_seq, n, sent_ns));
                }
                let frame = self.publisher.frame(channel, &payloads);
                self.sink.feed(frame).await.context("publishing")?;
                self.next_seq += n;
                sent += n;
            }
            self.sink.flush().await.context("publishing")?;

            if last_progress.elapsed() > Duration::from_millis(250) {
                last_progress = Instant::now();
                self.signal.send_modify(|v| *v = v.wrapping_add(1) % STOP);
                progress.set_position(self.shared.delivered[index].load(Ordering::Relaxed));
            }
        }
        Ok((sent, worst_lag))
    }

    /// Asks subscribers to merge their buffers until the step's deliveries are all in
    /// or [`SETTLE`] has passed.
    async fn settle(&self, index: usize, expected: u64, progress: &indicatif::ProgressBar) {
        let deadline = Instant::now() + SETTLE;
        loop {
            self.flush().await;
            let delivered = self.shared.delivered[index].load(Ordering::Relaxed);
            progress.set_position(delivered);
            if delivered >= expected || Instant::now() >= deadline {
                return;
            }
        }
    }

    async fn flush(&self) {
        self.signal.send_modify(|v| *v = v.wrapping_add(1) % STOP);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Publishes one message per frame at `rate` until `until` returns true; for
    /// failover, where the load runs while something else happens.
    pub async fn steady(
        &mut self,
        index: usize,
        rate: f64,
        until: &mut (dyn FnMut() -> bool + Send),
    ) -> anyhow::Result<u64> {
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut sent = 0;
        while !until() {
            ticker.tick().await;
            let stamp = Stamp {
                step: index as u8,
                sent_ns: payload::now_ns(),
                seq: self.next_seq,
            };
            let channel = &self.channels[0];
            if self.track {
                let serial = self.publisher.next_serial();
                self.published
                    .push((serial, self.next_seq, 1, stamp.sent_ns));
            }
            let frame = self.publisher.frame(channel, &[payload::make(stamp)]);
            self.sink.send(frame).await.context("publishing")?;
            self.next_seq += 1;
            sent += 1;
        }
        Ok(sent)
    }

    /// Waits until `expected` deliveries of step `index` arrived or `wait` passed.
    pub async fn wait_delivered(&self, index: usize, expected: u64, wait: Duration) -> u64 {
        let deadline = Instant::now() + wait;
        loop {
            self.flush().await;
            let delivered = self.shared.delivered[index].load(Ordering::Relaxed);
            if delivered >= expected || Instant::now() >= deadline {
                return delivered;
            }
        }
    }

    /// Stops every task; returns the sequence numbers each subscriber saw (when
    /// tracking).
    pub async fn finish(mut self) -> Vec<Vec<u64>> {
        let _ = self.signal.send(STOP);
        let mut seen = Vec::new();
        for task in self.subscribers.drain(..) {
            seen.push(task.await.unwrap_or_default());
        }
        let _ = self.sink.close().await;
        self.reader.abort();
        seen
    }
}

async fn connect_all(
    subscribers: &[(Endpoint, Vec<String>)],
    sources: &[IpAddr],
) -> anyhow::Result<Vec<Ws>> {
    let opened = futures_util::stream::iter(subscribers.iter().enumerate())
        .map(|(i, (endpoint, channels))| {
            let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            async move {
                wire::connect(endpoint, channels, source)
                    .await
                    .with_context(|| format!("subscriber {i}"))
            }
        })
        .buffered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    opened.into_iter().collect()
}

/// One subscriber socket: counts and times every payload it receives.
async fn subscriber(
    mut ws: Ws,
    shared: Arc<Shared>,
    mut signal: watch::Receiver<u64>,
    nats: bool,
    track: bool,
) -> Vec<u64> {
    let mut local = Local::default();
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            biased;
            changed = signal.changed() => {
                local.merge(&shared);
                if changed.is_err() || *signal.borrow() == STOP {
                    return seen;
                }
            }
            frame = ws.next() => {
                let bytes = match frame {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => t.into(),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break,
                };
                if nats && wire::is_nats_ping(&bytes) {
                    let _ = ws.send(wire::nats_pong()).await;
                }
                let now = payload::now_ns();
                payload::scan(&bytes, |stamp| {
                    local.record(stamp.step, now.saturating_sub(stamp.sent_ns));
                    if track {
                        seen.push(stamp.seq);
                    }
                });
                if local.latencies.len() >= LOCAL_BUFFER {
                    local.merge(&shared);
                }
            }
        }
    }
    local.merge(&shared);
    shared.lost.fetch_add(1, Ordering::Relaxed);
    // Wait for the stop so the run's accounting sees this socket's losses in time.
    while signal.changed().await.is_ok() && *signal.borrow() != STOP {}
    seen
}

/// A subscriber's buffered counts and latencies.
#[derive(Default)]
struct Local {
    latencies: Vec<(u8, u64)>,
}

impl Local {
    fn record(&mut self, step: u8, latency_ns: u64) {
        self.latencies.push((step, latency_ns));
    }

    fn merge(&mut self, shared: &Shared) {
        let mut rest = &self.latencies[..];
        while let Some(&(step, _)) = rest.first() {
            let run = rest.iter().take_while(|(s, _)| *s == step).count();
            let Some(hist) = shared.histograms.get(step as usize) else {
                rest = &rest[run..];
                continue;
            };
            let mut hist = hist.lock().expect("histogram lock");
            for &(_, latency) in &rest[..run] {
                hist.saturating_record(latency.max(1_000));
            }
            drop(hist);
            shared.delivered[step as usize].fetch_add(run as u64, Ordering::Relaxed);
            rest = &rest[run..];
        }
        self.latencies.clear();
    }
}

/// Reads what comes back on the publisher's socket: ACKs and NACKs for Ably, and
/// whatever the other servers send (drained so that their writes never block).
async fn read_replies(
    mut source: SplitStream<Ws>,
    proto: Proto,
    acks: Arc<Mutex<Acks>>,
    track: bool,
) {
    let msgpack = matches!(proto, Proto::Ably { msgpack: true, .. });
    let ably = matches!(proto, Proto::Ably { .. });
    while let Some(Ok(frame)) = source.next().await {
        if !ably {
            continue;
        }
        let bytes = match &frame {
            Message::Binary(b) => &b[..],
            Message::Text(t) => t.as_bytes(),
            _ => continue,
        };
        let mut acks = acks.lock().expect("acks lock");
        match wire::ably_reply(bytes, msgpack) {
            Reply::Ack { serial, count } => {
                acks.acked += count as u64;
                if track {
                    acks.log.push((payload::now_ns(), serial, count));
                }
            }
            Reply::Nack { count, .. } => acks.nacked += count as u64,
            Reply::Other => {}
        }
    }
}

/// A progress bar for one step, counting deliveries.
pub fn bar(label: &str, expected: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(expected);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>28} {bar:30} {pos:>10}/{len:10} deliveries {elapsed}",
    )
    .expect("valid progress template");
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}
