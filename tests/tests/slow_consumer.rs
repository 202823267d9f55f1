//! A slow consumer (`limits.max_connection_queue_bytes`): a subscriber that stops
//! reading its socket while a publisher sends steadily is cut off once its queue
//! passes the bound, with DISCONNECTED 80003, which the SDK resumes from; a healthy
//! subscriber on the same channel receives every message in order throughout, and
//! the node's memory stays bounded instead of holding everything the slow one
//! missed.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use starling_tests::client::{encode_component, is_action};
use starling_tests::{action, rest, Client, Format, Node, NodeOptions, WAIT};
use tokio::sync::watch;
use tokio::time::Instant;

const CHANNEL: &str = "steady";
/// Messages the publisher sends, and the size of each one's data.
const MESSAGES: usize = 3_000;
const PAYLOAD: usize = 16 * 1024;
/// Publishes in flight at once: steady, not one by one.
const WINDOW: usize = 32;
/// How far the publisher may get ahead of the healthy subscriber, in messages. The
/// healthy one thus never has more than `LEAD * PAYLOAD` (128 KiB) outstanding, half
/// the queue bound, however slow the machine; the slow one falls behind without end.
const LEAD: usize = 8;
const QUEUE_BYTES: usize = 256 * 1024;
/// What the node may grow by while 48 MiB pass through it. Holding what the slow
/// consumer missed (all of it, less what the kernel buffers took) would take more.
const RSS_GROWTH_BOUND_KIB: u64 = 24 * 1024;

fn options() -> NodeOptions {
    NodeOptions::default()
        .env(
            "STARLING_LIMITS__MAX_CONNECTION_QUEUE_BYTES",
            QUEUE_BYTES.to_string(),
        )
        .env("STARLING_LIMITS__MAX_INBOUND_RATE", "100000")
        .env("STARLING_LIMITS__MAX_INBOUND_BURST", "100000")
        // Retention small against the traffic, so history is not what memory holds.
        .env("STARLING_HISTORY__MAX_BYTES", "1048576")
        // The stalled socket must outlive the run: a write blocked for an idle
        // interval ends the connection without a word.
        .env("STARLING_CONNECTION__MAX_IDLE_INTERVAL_MS", "120000")
}

fn name_of(message: &Value) -> String {
    message["name"].as_str().unwrap_or_default().to_owned()
}

/// Reads until `count` messages arrived on the channel, telling `progress` how many
/// so far; their names, in order.
async fn receive_all(
    mut client: Client,
    count: usize,
    progress: watch::Sender<usize>,
) -> Result<Vec<String>> {
    let mut names = Vec::with_capacity(count);
    while names.len() < count {
        let frame = client
            .next_message(CHANNEL)
            .await
            .with_context(|| format!("healthy subscriber after {} messages", names.len()))?;
        let batch = frame["messages"].as_array().context("messages")?;
        names.extend(batch.iter().map(name_of));
        progress.send_replace(names.len());
    }
    Ok(names)
}

/// Publishes every message with up to `WINDOW` waiting for their ACKs, and never more
/// than `LEAD` ahead of what the healthy subscriber received.
async fn publish_steadily(
    publisher: &mut Client,
    mut healthy: watch::Receiver<usize>,
) -> Result<()> {
    let data = "x".repeat(PAYLOAD);
    let mut in_flight = std::collections::VecDeque::new();
    for n in 0..MESSAGES {
        let caught_up = healthy.wait_for(|received| received + LEAD >= n);
        tokio::time::timeout(WAIT, caught_up)
            .await
            .with_context(|| format!("the healthy subscriber stalled before m{n}"))?
            .context("the healthy subscriber ended")?;
        let serial = publisher
            .publish(CHANNEL, json!([{"name": format!("m{n}"), "data": data}]))
            .await?;
        in_flight.push_back(serial);
        if in_flight.len() == WINDOW {
            let oldest = in_flight.pop_front().expect("window is full");
            ensure_acked(publisher, oldest).await?;
        }
    }
    for serial in in_flight {
        ensure_acked(publisher, serial).await?;
    }
    Ok(())
}

async fn ensure_acked(publisher: &mut Client, serial: i64) -> Result<()> {
    let reply = publisher.ack_for(serial).await?;
    ensure!(is_action(&reply, action::ACK), "publish {serial}: {reply}");
    Ok(())
}

/// The node's count of connections cut off as slow consumers.
async fn slow_consumers_cut_off(node: &Node) -> Result<u64> {
    let text = rest::http()
        .get(node.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| l.starts_with("starling_slow_consumers_disconnected_total "));
    Ok(line
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// The slow consumer reads again: a gapless prefix of the messages, in order, then
/// DISCONNECTED 80003 and the close. Returns the last channelSerial it received.
async fn read_until_sent_away(slow: &mut Client) -> Result<String> {
    let mut received = 0;
    let mut serial = String::new();
    loop {
        let frame = slow
            .recv()
            .await
            .context("the slow consumer reading again")?;
        if is_action(&frame, action::DISCONNECTED) {
            let error = &frame["error"];
            ensure!(
                error["code"] == 80003 && error["statusCode"] == 400,
                "DISCONNECTED 80003/400: {frame}"
            );
            ensure!(
                received > 0,
                "the slow consumer got nothing before it was cut off"
            );
            ensure!(
                received < MESSAGES,
                "the slow consumer got everything ({received}): it was never slow"
            );
            eprintln!("the slow consumer read {received} messages, then DISCONNECTED");
            slow.expect_closed(WAIT).await?;
            return Ok(serial);
        }
        if !is_action(&frame, action::MESSAGE) {
            continue;
        }
        for message in frame["messages"].as_array().context("messages")? {
            let expected = format!("m{received}");
            ensure!(
                name_of(message) == expected,
                "the slow consumer saw {} where {expected} was due",
                name_of(message)
            );
            received += 1;
        }
        serial = frame["channelSerial"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_while_a_healthy_one_gets_everything(
) -> Result<()> {
    let node = Node::start_with(options()).await?;
    let mut healthy = Client::connect(&node, "", Format::Msgpack).await?;
    healthy.attach(CHANNEL).await?;
    let mut slow = Client::connect(&node, "", Format::Json).await?;
    slow.attach(CHANNEL).await?;
    let slow_id = slow.connection_id().to_owned();
    let slow_key = slow.connected()["connectionDetails"]["connectionKey"]
        .as_str()
        .context("connectionKey")?
        .to_owned();
    let mut publisher = Client::connect(&node, "", Format::Msgpack).await?;
    let rss_before = node.rss_kib()?;

    eprintln!("phase: {MESSAGES} messages of {PAYLOAD} bytes; the slow subscriber reads nothing");
    let (progress, watched) = watch::channel(0);
    let healthy = tokio::spawn(receive_all(healthy, MESSAGES, progress));
    let started = Instant::now();
    publish_steadily(&mut publisher, watched).await?;
    let names = tokio::time::timeout(WAIT * 6, healthy)
        .await
        .context("the healthy subscriber did not finish")???;
    let elapsed = started.elapsed();
    let wanted: Vec<String> = (0..MESSAGES).map(|n| format!("m{n}")).collect();
    ensure!(
        names == wanted,
        "the healthy subscriber missed or reordered messages"
    );
    ensure!(
        slow_consumers_cut_off(&node).await? >= 1,
        "the node never cut the slow consumer off"
    );
    let rss_after = node.rss_kib()?;
    eprintln!(
        "delivered {MESSAGES} x {PAYLOAD} B in {elapsed:?}; node RSS {rss_before} KiB -> {rss_after} KiB"
    );
    ensure!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_BOUND_KIB,
        "the node grew by {} KiB, more than {RSS_GROWTH_BOUND_KIB} KiB",
        rss_after.saturating_sub(rss_before)
    );

    eprintln!("phase: the slow subscriber reads again: what was queued, then DISCONNECTED");
    let serial = read_until_sent_away(&mut slow).await?;

    eprintln!("phase: it resumes as an SDK would: same connectionId, live again");
    let query = format!("resume={}", encode_component(&slow_key));
    let mut resumed = Client::connect(&node, &query, Format::Json).await?;
    ensure!(
        resumed.connection_id() == slow_id,
        "resume kept the connectionId"
    );
    let attached = resumed
        .attach_with(CHANNEL, json!({ "channelSerial": serial }))
        .await?;
    ensure!(is_action(&attached, action::ATTACHED), "{attached}");
    publisher
        .publish_acked(CHANNEL, json!([{"name": "live"}]))
        .await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let frame = resumed.next_message(CHANNEL).await?;
        let batch = frame["messages"].as_array().context("messages")?;
        if batch.iter().any(|m| name_of(m) == "live") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the resumed subscriber never got the live message");
        }
    }
    node.assert_running()
}
