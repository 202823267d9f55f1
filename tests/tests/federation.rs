//! Two regions bridged: each region's node accepts bridges, both share a 3-member
//! global master group. A channel's home sequences it for both regions; the other
//! region forwards its publishes there and relays what the home sequenced.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::header::AUTHORIZATION;
use serde_json::{json, Value};
use starling_tests::client::is_action;
use starling_tests::global::GlobalGroup;
use starling_tests::rest;
use starling_tests::{action, Client, Format, Node, NodeOptions};

/// The federation's nodes share one cluster secret, so connection keys verify in
/// every region.
const SECRET: &str = "federation-test-secret-0123456789abcdef";

/// How long a bridge may take to come up (registration, dial, interest).
const LINK_UP: Duration = Duration::from_secs(15);

async fn bridged_node(group: &GlobalGroup, region: &str) -> Result<Node> {
    bridged_node_with(group, region, "").await
}

/// A node of `region` with a bridge listener and `extra` lines in its `[bridge]`.
async fn bridged_node_with(group: &GlobalGroup, region: &str, extra: &str) -> Result<Node> {
    Node::start_with(bridged_options(group, region, extra)?).await
}

fn bridged_options(group: &GlobalGroup, region: &str, extra: &str) -> Result<NodeOptions> {
    let config = format!(
        "[node]\nid = \"{region}-1\"\nregion = \"{region}\"\ncluster_secret = \"{SECRET}\"\n\n\
         [bridge]\nlisten = \"127.0.0.1:0\"\n\
         retry_ms = 200\n{extra}\n{}",
        group.node_config(region)?
    );
    Ok(NodeOptions::default().config(config))
}

/// Attaches, retrying while the region cannot reach the channel's home yet.
async fn attach_when_linked(client: &mut Client, channel: &str) -> Result<Value> {
    let deadline = Instant::now() + LINK_UP;
    loop {
        let reply = client.attach_with(channel, json!({})).await;
        match reply {
            Ok(reply) if is_action(&reply, action::ATTACHED) => return Ok(reply),
            Ok(reply) if Instant::now() > deadline => bail!("never attached: {reply}"),
            Err(error) if Instant::now() > deadline => return Err(error),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A heartbeat period far longer than [`LINK_UP`], and a lease to match.
const SLOW_HEARTBEAT_MS: &str = "60000";
const SLOW_LEASE_MS: &str = "180000";

/// A bridged node of `region` whose heartbeats come only once a minute.
async fn slow_heartbeat_node(group: &GlobalGroup, region: &str) -> Result<Node> {
    let options = (bridged_options(group, region, "")?)
        .env("STARLING_GLOBAL__HEARTBEAT_MS", SLOW_HEARTBEAT_MS)
        .env("STARLING_GLOBAL__LEASE_MS", SLOW_LEASE_MS);
    Node::start_with(options).await
}

fn names(messages: &[Value]) -> Vec<String> {
    let name = |m: &Value| m["name"].as_str().unwrap_or_default().to_owned();
    messages.iter().map(name).collect()
}

#[tokio::test]
async fn publishers_in_both_regions_reach_subscribers_in_both_in_one_order() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let eu = bridged_node(&group, "eu").await?;
    let us = bridged_node(&group, "us").await?;

    eprintln!("phase: eu uses the channel first and becomes its home");
    let mut eu_pub = Client::connect(&eu, "", Format::Msgpack).await?;
    let first = eu_pub.publish_answered("shared", "eu-0").await?;
    ensure!(is_action(&first, action::ACK), "eu publish: {first}");

    eprintln!("phase: subscribers attach in both regions");
    let mut eu_sub = Client::connect(&eu, "", Format::Json).await?;
    eu_sub.attach("shared").await?;
    let mut us_sub = Client::connect(&us, "", Format::Msgpack).await?;
    attach_when_linked(&mut us_sub, "shared").await?;

    eprintln!("phase: both regions publish, interleaved, each waiting for its ACKs");
    let mut us_pub = Client::connect(&us, "", Format::Json).await?;
    let per_region = 20;
    for i in 0..per_region {
        let eu_ack = eu_pub
            .publish_answered("shared", &format!("eu-{}", i + 1))
            .await?;
        ensure!(is_action(&eu_ack, action::ACK), "eu publish {i}: {eu_ack}");
        let us_ack = us_pub
            .publish_answered("shared", &format!("us-{i}"))
            .await?;
        ensure!(is_action(&us_ack, action::ACK), "us publish {i}: {us_ack}");
    }

    let total = 2 * per_region;
    let seen_eu = eu_sub.collect_messages("shared", total).await?;
    let seen_us = us_sub.collect_messages("shared", total).await?;
    ensure!(
        names(&seen_eu) == names(&seen_us),
        "the regions saw different orders:\n eu {:?}\n us {:?}",
        names(&seen_eu),
        names(&seen_us)
    );
    let serials = |seen: &[Value]| -> Vec<String> {
        seen.iter()
            .map(|m| m["serial"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    ensure!(
        serials(&seen_eu) == serials(&seen_us),
        "serials differ between regions"
    );
    let mut sorted = serials(&seen_us);
    sorted.sort();
    ensure!(sorted == serials(&seen_us), "serials out of order");
    for region in ["eu", "us"] {
        let own: Vec<String> = names(&seen_us)
            .into_iter()
            .filter(|n| n.starts_with(region))
            .collect();
        let start = if region == "eu" { 1 } else { 0 };
        let wanted: Vec<String> = (start..start + per_region)
            .map(|i| format!("{region}-{i}"))
            .collect();
        ensure!(
            own == wanted,
            "{region}'s messages out of publish order: {own:?}"
        );
    }

    eprintln!("phase: REST history in us (from what it relayed) agrees with eu's");
    let eu_history = names(&history(&eu, "shared").await?);
    let us_history = names(&history(&us, "shared").await?);
    ensure!(
        eu_history == us_history && us_history.len() == total + 1,
        "history differs:\n eu {eu_history:?}\n us {us_history:?}"
    );

    eprintln!("phase: history in us of a channel nobody there attached to comes from eu");
    for i in 0..3 {
        eu_pub
            .publish_answered("cold", &format!("cold-{i}"))
            .await?;
    }
    let cold = names(&history(&us, "cold").await?);
    ensure!(
        cold == ["cold-0", "cold-1", "cold-2"],
        "us history of cold: {cold:?}"
    );
    Ok(())
}

/// A node registers its bridge address as soon as it listens, not at its next
/// heartbeat: with heartbeats a minute apart, the other region still reaches a
/// channel homed in a region that has just started within [`LINK_UP`].
#[tokio::test]
async fn a_region_that_just_started_is_reachable_before_its_next_heartbeat() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let eu = slow_heartbeat_node(&group, "eu").await?;
    let us = slow_heartbeat_node(&group, "us").await?;

    eprintln!("phase: eu homes the channel; a subscriber attaches there");
    let mut eu_pub = Client::connect(&eu, "", Format::Msgpack).await?;
    let first = eu_pub.publish_answered("fresh", "eu-0").await?;
    ensure!(is_action(&first, action::ACK), "eu publish: {first}");
    let mut eu_sub = Client::connect(&eu, "", Format::Msgpack).await?;
    eu_sub.attach("fresh").await?;

    eprintln!("phase: us reaches the home within {LINK_UP:?} (heartbeats every 60 s)");
    let mut us_sub = Client::connect(&us, "", Format::Msgpack).await?;
    attach_when_linked(&mut us_sub, "fresh").await?;
    let mut us_pub = Client::connect(&us, "", Format::Json).await?;
    let ack = us_pub.publish_answered("fresh", "us-0").await?;
    ensure!(is_action(&ack, action::ACK), "us publish: {ack}");

    let seen = eu_sub.collect_messages("fresh", 1).await?;
    ensure!(names(&seen) == ["us-0"], "eu saw {:?}", names(&seen));
    Ok(())
}

/// REST history of `channel` through `node`, oldest first.
async fn history(node: &Node, channel: &str) -> Result<Vec<Value>> {
    let url = node.url(&format!(
        "/channels/{channel}/messages?direction=forwards&limit=100"
    ));
    let body: Value = rest::http()
        .get(url)
        .header(AUTHORIZATION, rest::basic(node.key()))
        .send()
        .await?
        .json()
        .await?;
    Ok(body.as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn three_regions_deliver_each_message_to_each_subscriber_once() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let mut nodes = Vec::new();
    for region in ["eu", "us", "ap"] {
        nodes.push(bridged_node(&group, region).await?);
    }
    let mut home_pub = Client::connect(&nodes[0], "", Format::Msgpack).await?;
    home_pub.publish_answered("trio", "eu-0").await?;

    let mut subs = Vec::new();
    for node in &nodes {
        let mut sub = Client::connect(node, "", Format::Json).await?;
        attach_when_linked(&mut sub, "trio").await?;
        subs.push(sub);
    }
    let mut pubs = Vec::new();
    for node in &nodes {
        pubs.push(Client::connect(node, "", Format::Msgpack).await?);
    }
    for round in 0..5 {
        for (publisher, region) in pubs.iter_mut().zip(["eu", "us", "ap"]) {
            let name = format!("{region}-{}", round + 1);
            let ack = publisher.publish_answered("trio", &name).await?;
            ensure!(is_action(&ack, action::ACK), "{name}: {ack}");
        }
    }
    let mut orders = Vec::new();
    for sub in &mut subs {
        orders.push(names(&sub.collect_messages("trio", 15).await?));
    }
    ensure!(
        orders[0] == orders[1] && orders[1] == orders[2],
        "orders differ: {orders:?}"
    );
    let mut unique = orders[0].clone();
    unique.sort();
    unique.dedup();
    ensure!(unique.len() == 15, "duplicates or losses: {:?}", orders[0]);
    // Nothing more arrives: each message reached each subscriber once.
    for sub in &mut subs {
        let is_message = |f: &Value| is_action(f, action::MESSAGE) && f["channel"] == "trio";
        let extra = sub.recv_until(is_message, Duration::from_secs(1)).await;
        ensure!(extra.is_err(), "a message arrived twice: {:?}", extra.ok());
    }
    Ok(())
}

/// A loopback port nobody listens on yet.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A node of `region` whose bridge other regions reach through `proxy` only.
async fn node_behind(
    group: &GlobalGroup,
    region: &str,
    port: u16,
    proxy: &starling_tests::proxy::Proxy,
    extra: &str,
) -> Result<Node> {
    let config = format!(
        "[node]\nid = \"{region}-1\"\nregion = \"{region}\"\n\n[bridge]\nlisten = \"127.0.0.1:{port}\"\n\
         advertise = \"{}\"\nretry_ms = 200\n{extra}\n{}",
        proxy.addr(),
        group.node_config(region)?
    );
    Node::start_with(NodeOptions::default().config(config)).await
}

#[tokio::test]
async fn a_cut_link_holds_publishes_and_heals_without_loss_or_reordering() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let port = free_port()?;
    let proxy = starling_tests::proxy::Proxy::start(format!("127.0.0.1:{port}").parse()?).await?;
    let eu = node_behind(&group, "eu", port, &proxy, "").await?;
    let us = bridged_node(&group, "us").await?;

    let mut eu_pub = Client::connect(&eu, "", Format::Msgpack).await?;
    let first = eu_pub.publish_answered("linked", "eu-0").await?;
    ensure!(is_action(&first, action::ACK), "eu publish: {first}");
    let mut eu_sub = Client::connect(&eu, "", Format::Json).await?;
    eu_sub.attach("linked").await?;
    let mut us_sub = Client::connect(&us, "", Format::Msgpack).await?;
    attach_when_linked(&mut us_sub, "linked").await?;
    let mut us_pub = Client::connect(&us, "", Format::Json).await?;
    let warm = us_pub.publish_answered("linked", "us-0").await?;
    ensure!(
        is_action(&warm, action::ACK),
        "us publish over the link: {warm}"
    );

    eprintln!("phase: the link is cut; both regions keep publishing");
    proxy.cut();
    let mut pending = Vec::new();
    for i in 1..=5 {
        pending.push(
            us_pub
                .publish("linked", json!([{ "name": format!("us-{i}") }]))
                .await?,
        );
        let ack = eu_pub
            .publish_answered("linked", &format!("eu-{i}"))
            .await?;
        ensure!(
            is_action(&ack, action::ACK),
            "the home stops acknowledging: {ack}"
        );
    }
    // The cut lasts a few seconds: long enough for both sides to see the link gone.
    tokio::time::sleep(Duration::from_secs(3)).await;

    eprintln!("phase: healed; held publishes are acknowledged and everything arrives once");
    proxy.heal();
    for msg_serial in pending {
        let reply = us_pub
            .recv_until(
                |f| {
                    (is_action(f, action::ACK) || is_action(f, action::NACK))
                        && f["msgSerial"] == msg_serial
                },
                Duration::from_secs(20),
            )
            .await?;
        ensure!(
            is_action(&reply, action::ACK),
            "a held publish was refused: {reply}"
        );
    }
    let total = 12;
    let seen_eu = names(&eu_sub.collect_messages("linked", total - 1).await?);
    let seen_us = names(&us_sub.collect_messages("linked", total - 1).await?);
    ensure!(
        seen_eu == seen_us,
        "orders differ:\n eu {seen_eu:?}\n us {seen_us:?}"
    );
    let mut unique = seen_us.clone();
    unique.sort();
    unique.dedup();
    ensure!(unique.len() == seen_us.len(), "duplicates: {seen_us:?}");
    for region in ["eu", "us"] {
        let own: Vec<&String> = seen_us.iter().filter(|n| n.starts_with(region)).collect();
        let mut sorted = own.clone();
        sorted.sort();
        ensure!(own == sorted, "{region} out of publish order: {own:?}");
    }
    ensure!(seen_us.len() == total - 1, "lost messages: {seen_us:?}");
    Ok(())
}

#[tokio::test]
async fn publishes_held_past_the_bound_are_refused_with_a_clear_error() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let port = free_port()?;
    let proxy = starling_tests::proxy::Proxy::start(format!("127.0.0.1:{port}").parse()?).await?;
    let eu = node_behind(&group, "eu", port, &proxy, "").await?;
    let us = bridged_node_with(&group, "us", "hold_ms = 1500\n").await?;

    let mut eu_pub = Client::connect(&eu, "", Format::Msgpack).await?;
    eu_pub.publish_answered("bounded", "eu-0").await?;
    let mut us_pub = Client::connect(&us, "", Format::Json).await?;
    let deadline = Instant::now() + LINK_UP;
    while !is_action(
        &us_pub.publish_answered("bounded", "warm").await?,
        action::ACK,
    ) {
        ensure!(Instant::now() < deadline, "the link never came up");
    }

    proxy.cut();
    let reply = us_pub.publish_answered("bounded", "held").await?;
    ensure!(
        is_action(&reply, action::NACK) && reply["error"]["code"] == 50003,
        "a publish held past the bound: {reply}"
    );
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("eu"),
        "the error names the unreachable home: {message}"
    );
    Ok(())
}

#[tokio::test]
async fn moving_a_home_under_load_keeps_one_order_without_loss_or_duplicates() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let eu = bridged_node(&group, "eu").await?;
    let us = bridged_node(&group, "us").await?;
    let mut eu_pub = Client::connect(&eu, "", Format::Msgpack).await?;
    let first = eu_pub.publish_answered("moving", "eu-0").await?;
    ensure!(is_action(&first, action::ACK), "eu publish: {first}");

    let mut eu_sub = Client::connect(&eu, "", Format::Json).await?;
    eu_sub.attach("moving").await?;
    let mut us_sub = Client::connect(&us, "", Format::Msgpack).await?;
    attach_when_linked(&mut us_sub, "moving").await?;
    let mut us_pub = Client::connect(&us, "", Format::Json).await?;

    let mut acked = vec!["eu-0".to_owned()];
    let mut refused = Vec::new();
    let rounds = 30;
    for round in 1..=rounds {
        if round == 10 {
            eprintln!("phase: the operator moves the home to us while both publish");
            let channel_key = format!("{}/moving", eu.app_id());
            group
                .operator(&["move-home", "--channel", &channel_key, "--to", "us"])
                .await?;
        }
        for (publisher, region) in [(&mut eu_pub, "eu"), (&mut us_pub, "us")] {
            let name = format!("{region}-{round}");
            let reply = publisher.publish_answered("moving", &name).await?;
            if is_action(&reply, action::ACK) {
                acked.push(name);
            } else {
                refused.push((name, reply));
            }
        }
    }
    ensure!(
        refused.len() <= 4,
        "too many refusals around the move: {refused:?}"
    );

    eprintln!("phase: both regions saw one order holding every acknowledged message once");
    let wait_for_all = |seen: &[Value]| {
        let names = names(seen);
        acked.iter().all(|a| names.contains(a))
    };
    let mut orders = Vec::new();
    for sub in [&mut eu_sub, &mut us_sub] {
        let mut seen = Vec::new();
        // The subscriber attached after eu-0: everything acknowledged after it.
        while !wait_for_all(&[vec![json!({"name": "eu-0"})], seen.clone()].concat()) {
            let frame = sub.next_message("moving").await?;
            seen.extend(frame["messages"].as_array().cloned().unwrap_or_default());
        }
        orders.push(seen);
    }
    let (eu_seen, us_seen) = (names(&orders[0]), names(&orders[1]));
    ensure!(
        eu_seen == us_seen,
        "orders differ:\n eu {eu_seen:?}\n us {us_seen:?}"
    );
    let mut unique = eu_seen.clone();
    unique.sort();
    unique.dedup();
    ensure!(unique.len() == eu_seen.len(), "duplicates: {eu_seen:?}");
    let serials: Vec<String> = (orders[0].iter())
        .map(|m| m["serial"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut sorted = serials.clone();
    sorted.sort();
    ensure!(
        sorted == serials,
        "serials out of order across the move: {serials:?}"
    );

    eprintln!("phase: history in both regions agrees, from before the move to after it");
    let eu_history = names(&history(&eu, "moving").await?);
    let us_history = names(&history(&us, "moving").await?);
    ensure!(
        eu_history == us_history,
        "history differs:\n eu {eu_history:?}\n us {us_history:?}"
    );
    for name in &acked {
        ensure!(
            us_history.contains(name),
            "{name} missing from the new home's history {us_history:?}; us log:\n{}\neu log:\n{}",
            us.log(),
            eu.log()
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_gap_the_home_no_longer_covers_is_reported_as_attached_with_an_error() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let port = free_port()?;
    let proxy = starling_tests::proxy::Proxy::start(format!("127.0.0.1:{port}").parse()?).await?;
    // The home keeps only its last 5 messages.
    let small = "\n[history]\nmax_messages = 5\nmin_messages = 1\n";
    let eu = node_behind(&group, "eu", port, &proxy, small).await?;
    let us = bridged_node(&group, "us").await?;

    let mut eu_pub = Client::connect(&eu, "", Format::Msgpack).await?;
    eu_pub.publish_answered("gappy", "eu-0").await?;
    let mut us_sub = Client::connect(&us, "", Format::Json).await?;
    attach_when_linked(&mut us_sub, "gappy").await?;
    eu_pub.publish_answered("gappy", "eu-1").await?;
    us_sub.next_message("gappy").await?;

    eprintln!("phase: cut while the home sequences more than it retains");
    proxy.cut();
    for i in 2..22 {
        eu_pub.publish_answered("gappy", &format!("eu-{i}")).await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.heal();

    eprintln!("phase: the subscriber is told of the gap, never silently continued");
    let told = us_sub
        .recv_until(
            |f| is_action(f, action::ATTACHED) && f["channel"] == "gappy",
            Duration::from_secs(20),
        )
        .await?;
    let flags = told["flags"].as_i64().unwrap_or(0);
    ensure!(flags & 4 == 0, "continuity claimed across a gap: {told}");
    ensure!(
        told["error"]["code"].as_i64().is_some(),
        "no error with the gap: {told}"
    );

    let after = eu_pub.publish_answered("gappy", "eu-after").await?;
    ensure!(is_action(&after, action::ACK), "{after}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let frame = us_sub.next_message("gappy").await?;
        if frame["messages"][0]["name"] == "eu-after" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "live traffic did not resume after the gap"
        );
    }
    Ok(())
}

fn connection_key(client: &Client) -> Result<String> {
    let key = client.connected()["connectionDetails"]["connectionKey"].as_str();
    Ok(key
        .context("CONNECTED carries a connection key")?
        .to_owned())
}

async fn resume_on(node: &Node, key: &str) -> Result<Client> {
    let query = format!("resume={}", starling_tests::client::encode_component(key));
    Client::connect(node, &query, Format::Json).await
}

#[tokio::test]
async fn a_connection_resumes_in_another_region_gaplessly_or_is_told_of_the_gap() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let eu = bridged_node(&group, "eu").await?;
    let us = bridged_node(&group, "us").await?;
    let mut eu_pub = Client::connect(&eu, "", Format::Msgpack).await?;
    eu_pub.publish_answered("roam", "m0").await?;

    eprintln!("phase: a us client sees m0, loses us, and resumes in eu (the home)");
    let mut roamer = Client::connect(&us, "", Format::Msgpack).await?;
    let id = roamer.connection_id().to_owned();
    let key = connection_key(&roamer)?;
    attach_when_linked(&mut roamer, "roam").await?;
    eu_pub.publish_answered("roam", "m1").await?;
    let seen = roamer.next_message("roam").await?;
    let serial = seen["channelSerial"].as_str().context("serial")?.to_owned();
    drop(roamer);
    for n in 2..=10 {
        eu_pub.publish_answered("roam", &format!("m{n}")).await?;
    }
    let mut resumed = resume_on(&eu, &key).await?;
    ensure!(
        resumed.connection_id() == id,
        "a new connectionId in the other region"
    );
    let attached = resumed
        .attach_with("roam", json!({ "channelSerial": serial }))
        .await?;
    ensure!(
        attached["flags"].as_i64().unwrap_or(0) & 4 != 0,
        "not RESUMED: {attached}"
    );
    let missed = names(&resumed.collect_messages("roam", 9).await?);
    let wanted: Vec<String> = (2..=10).map(|n| format!("m{n}")).collect();
    ensure!(missed == wanted, "replayed {missed:?}");

    eprintln!("phase: back to us, where the relay only holds what came after it started");
    let key = connection_key(&resumed)?;
    let serial_now = {
        eu_pub.publish_answered("roam", "m11").await?;
        let frame = resumed.next_message("roam").await?;
        frame["channelSerial"]
            .as_str()
            .context("serial")?
            .to_owned()
    };
    drop(resumed);
    // A us subscriber starts a fresh relay after the roamer's serial.
    let mut witness = Client::connect(&us, "", Format::Json).await?;
    eu_pub.publish_answered("roam", "m12").await?;
    attach_when_linked(&mut witness, "roam").await?;
    eu_pub.publish_answered("roam", "m13").await?;
    witness.next_message("roam").await?;
    let mut back = resume_on(&us, &key).await?;
    let reattached = back
        .attach_with("roam", json!({ "channelSerial": serial_now }))
        .await?;
    let resumed_flag = reattached["flags"].as_i64().unwrap_or(0) & 4 != 0;
    eprintln!("phase: re-attached in us: {reattached}");
    if resumed_flag {
        // The relay covered it after all: then nothing may be missing.
        let got = names(&back.collect_messages("roam", 2).await?);
        ensure!(got == ["m12", "m13"], "resumed but got {got:?}");
    } else {
        ensure!(
            reattached["error"]["code"].as_i64().is_some(),
            "continuity lost without an error: {reattached}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn resuming_in_another_region_past_the_homes_history_reports_the_gap() -> Result<()> {
    let group = GlobalGroup::start(3).await?;
    let eu = bridged_node_with(
        &group,
        "eu",
        "\n[history]\nmax_messages = 5\nmin_messages = 1\n",
    )
    .await?;
    let us = bridged_node(&group, "us").await?;
    let mut eu_pub = Client::connect(&eu, "", Format::Msgpack).await?;
    eu_pub.publish_answered("far", "m0").await?;

    let mut roamer = Client::connect(&eu, "", Format::Json).await?;
    let key = connection_key(&roamer)?;
    roamer.attach("far").await?;
    eu_pub.publish_answered("far", "m1").await?;
    let seen = roamer.next_message("far").await?;
    let serial = seen["channelSerial"].as_str().context("serial")?.to_owned();
    drop(roamer);
    for n in 2..=12 {
        eu_pub.publish_answered("far", &format!("m{n}")).await?;
    }

    let mut back = resume_on(&us, &key).await?;
    let deadline = Instant::now() + LINK_UP;
    let reattached = loop {
        let reply = back
            .attach_with("far", json!({ "channelSerial": serial }))
            .await?;
        if is_action(&reply, action::ATTACHED) || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        is_action(&reattached, action::ATTACHED),
        "never attached: {reattached}"
    );
    ensure!(
        reattached["flags"].as_i64().unwrap_or(0) & 4 == 0,
        "continuity claimed although the home no longer holds m2: {reattached}"
    );
    ensure!(
        reattached["error"]["code"].as_i64().is_some(),
        "a gap without an error: {reattached}"
    );
    Ok(())
}
