//! Connection continuity on one node over raw WebSocket: a dropped transport resumes
//! with its connection key, keeps its connectionId, gets RESUMED on re-attach and then
//! exactly the messages it missed; a resent publish is applied once. Keys that are
//! forged or too old start a new connection with the protocol's error codes.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use starling_tests::client::encode_component;
use starling_tests::{Client, Format, Node, NodeOptions};

/// ATTACHED's RESUMED flag (protocol.md §3.4).
const RESUMED: i64 = 1 << 2;

/// A short connection state TTL, so expiry can be tested: keys are renewed every
/// quarter of it and accepted up to TTL plus one renewal (here 2 s + 1 s).
const SHORT_TTL: &str = "[connection]\nstate_ttl_ms = 2000\n";

fn connection_key(client: &Client) -> Result<String> {
    let key = client.connected()["connectionDetails"]["connectionKey"].as_str();
    Ok(key
        .context("CONNECTED carries a connection key")?
        .to_owned())
}

async fn resume(node: &Node, key: &str, format: Format) -> Result<Client> {
    let query = format!("resume={}", encode_component(key));
    Client::connect(node, &query, format).await
}

fn names(messages: &[Value]) -> Vec<String> {
    let name = |m: &Value| m["name"].as_str().unwrap_or_default().to_owned();
    messages.iter().map(name).collect()
}

#[tokio::test]
async fn a_resumed_connection_keeps_its_id_and_gets_exactly_what_it_missed() -> Result<()> {
    for format in [Format::Json, Format::Msgpack] {
        resume_gets_the_missed_messages(format).await?;
    }
    Ok(())
}

async fn resume_gets_the_missed_messages(format: Format) -> Result<()> {
    // The publisher sends 51 publishes back to back, each as soon as the last is
    // ACKed: on loopback that is far beyond the default 50 a second.
    let fast = NodeOptions::default().env("STARLING_LIMITS__MAX_INBOUND_RATE", "1000");
    let node = Node::start_with(fast).await?;
    let mut publisher = Client::connect(&node, "", Format::Msgpack).await?;
    let mut subscriber = Client::connect(&node, "", format).await?;
    let id = subscriber.connection_id().to_owned();
    let key = connection_key(&subscriber)?;
    subscriber.attach("resumable").await?;

    eprintln!("phase: the subscriber sees m0, then its transport drops");
    publisher
        .publish_acked("resumable", json!([{"name": "m0"}]))
        .await?;
    let first = subscriber.next_message("resumable").await?;
    let serial = first["channelSerial"]
        .as_str()
        .context("channelSerial")?
        .to_owned();
    drop(subscriber);

    for n in 1..=50 {
        publisher
            .publish_acked("resumable", json!([{ "name": format!("m{n}") }]))
            .await?;
    }

    eprintln!("phase: it resumes: same connectionId, no error");
    let mut resumed = resume(&node, &key, format).await?;
    ensure!(
        resumed.connection_id() == id,
        "a new connectionId after resume"
    );
    ensure!(
        resumed.connected().get("error").is_none_or(Value::is_null),
        "resume reported an error: {}",
        resumed.connected()
    );

    eprintln!("phase: re-attach with its channelSerial: RESUMED, then m1..m50 once, in order");
    let attached = resumed
        .attach_with("resumable", json!({ "channelSerial": serial }))
        .await?;
    let flags = attached["flags"].as_i64().unwrap_or(0);
    ensure!(flags & RESUMED != 0, "ATTACHED without RESUMED: {attached}");
    let missed = resumed.collect_messages("resumable", 50).await?;
    let wanted: Vec<String> = (1..=50).map(|n| format!("m{n}")).collect();
    ensure!(names(&missed) == wanted, "replayed {:?}", names(&missed));

    publisher
        .publish_acked("resumable", json!([{"name": "live"}]))
        .await?;
    let live = resumed.next_message("resumable").await?;
    ensure!(
        live["messages"][0]["name"] == "live",
        "after the replay, live traffic: {live}"
    );
    node.assert_running()
}

#[tokio::test]
async fn a_publish_resent_after_resume_is_applied_once_with_its_first_serial() -> Result<()> {
    let node = Node::start().await?;
    let mut watcher = Client::connect(&node, "", Format::Json).await?;
    watcher.attach("once").await?;

    let mut client = Client::connect(&node, "", Format::Msgpack).await?;
    let key = connection_key(&client)?;
    let first = client.publish_acked("once", json!([{"name": "p"}])).await?;
    drop(client);

    // The ACK was lost with the transport, so the client sends msgSerial 0 again.
    let mut resumed = resume(&node, &key, Format::Msgpack).await?;
    resumed.set_next_msg_serial(0);
    let again = resumed
        .publish_acked("once", json!([{"name": "p"}]))
        .await?;
    ensure!(
        again["res"] == first["res"],
        "the resend got other serials: {again} vs {first}"
    );
    resumed
        .publish_acked("once", json!([{"name": "after"}]))
        .await?;

    let seen = watcher.collect_messages("once", 2).await?;
    ensure!(
        names(&seen) == ["p", "after"],
        "delivered {:?}",
        names(&seen)
    );
    Ok(())
}

#[tokio::test]
async fn forged_and_expired_keys_start_a_new_connection_with_80018_and_80008() -> Result<()> {
    let node = Node::start_with(NodeOptions::default().config(SHORT_TTL)).await?;
    let client = Client::connect(&node, "", Format::Json).await?;
    let id = client.connection_id().to_owned();
    let key = connection_key(&client)?;
    drop(client);

    eprintln!("phase: a key with its mac tampered with");
    let (body, mac) = key.rsplit_once('.').context("key shape")?;
    let flipped = if mac.starts_with('A') { "B" } else { "A" };
    let forged = format!("{body}.{flipped}{}", &mac[1..]);
    let refused = resume(&node, &forged, Format::Json).await?;
    ensure!(
        refused.connection_id() != id,
        "a forged key resumed the connection"
    );
    ensure!(
        refused.connected()["error"]["code"] == 80018,
        "forged key: {}",
        refused.connected()
    );

    eprintln!("phase: the genuine key, once the state TTL has passed");
    let expired_at = tokio::time::Instant::now() + Duration::from_millis(3_500);
    tokio::time::sleep_until(expired_at).await;
    let late = resume(&node, &key, Format::Json).await?;
    ensure!(
        late.connection_id() != id,
        "an expired key resumed the connection"
    );
    ensure!(
        late.connected()["error"]["code"] == 80008,
        "expired key: {}",
        late.connected()
    );
    Ok(())
}

/// ATTACHED's HAS_BACKLOG flag.
const HAS_BACKLOG: i64 = 1 << 1;

#[tokio::test]
async fn rewind_by_count_and_by_duration_replays_the_last_messages_then_live() -> Result<()> {
    let node = Node::start().await?;
    let mut publisher = Client::connect(&node, "", Format::Msgpack).await?;
    let cases = [
        ("3", vec!["m2", "m3", "m4"]),
        ("1m", vec!["m0", "m1", "m2", "m3", "m4"]),
    ];
    for (rewind, wanted) in cases {
        let channel = format!("rewound-{rewind}");
        for n in 0..5 {
            publisher
                .publish_acked(&channel, json!([{ "name": format!("m{n}") }]))
                .await?;
        }

        let mut client = Client::connect(&node, "", Format::Json).await?;
        let attached = client
            .attach_with(&channel, json!({"params": {"rewind": rewind}}))
            .await?;
        let flags = attached["flags"].as_i64().unwrap_or(0);
        ensure!(
            flags & HAS_BACKLOG != 0,
            "rewind={rewind}: no HAS_BACKLOG: {attached}"
        );
        ensure!(
            attached["params"]["rewind"] == rewind,
            "param not echoed: {attached}"
        );

        // The rewound messages, then the live one, and nothing else.
        publisher
            .publish_acked(&channel, json!([{"name": "live"}]))
            .await?;
        let got = client.collect_messages(&channel, wanted.len() + 1).await?;
        let mut expected: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
        expected.push("live".into());
        ensure!(
            names(&got) == expected,
            "rewind={rewind} delivered {:?}",
            names(&got)
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_unparseable_rewind_fails_the_attach_and_the_connection_stays_usable() -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", Format::Msgpack).await?;
    let reply = client
        .attach_with("rewound", json!({"params": {"rewind": "soon"}}))
        .await?;
    ensure!(
        reply["action"] == 9 && reply["error"]["code"] == 40003,
        "an unparseable rewind: {reply}"
    );
    client.attach("rewound").await?;
    Ok(())
}

#[tokio::test]
async fn a_rest_publish_repeated_with_its_id_is_applied_once_with_the_same_serial() -> Result<()> {
    let node = Node::start().await?;
    let mut watcher = Client::connect(&node, "", Format::Json).await?;
    watcher.attach("idem").await?;
    let publish = || async {
        let response = starling_tests::rest::http()
            .post(node.url("/channels/idem/messages"))
            .header(
                reqwest::header::AUTHORIZATION,
                starling_tests::rest::basic(node.key()),
            )
            .json(&json!({"id": "client-chosen:0", "name": "once", "data": "x"}))
            .send()
            .await?;
        ensure!(response.status() == 201, "publish: {}", response.status());
        anyhow::Ok(response.json::<Value>().await?)
    };
    let first = publish().await?;
    let again = publish().await?;
    ensure!(
        first == again,
        "the repeat got other serials: {first} vs {again}"
    );
    watcher
        .send(&json!({"action": 15, "channel": "idem", "msgSerial": 0, "messages": [{"name": "after"}]}))
        .await?;
    let seen = watcher.collect_messages("idem", 2).await?;
    ensure!(
        names(&seen) == ["once", "after"],
        "delivered {:?}",
        names(&seen)
    );
    Ok(())
}

#[tokio::test]
async fn recover_with_the_recovered_channel_serial_continues_like_a_resume() -> Result<()> {
    let node = Node::start().await?;
    let mut publisher = Client::connect(&node, "", Format::Json).await?;
    let mut old = Client::connect(&node, "", Format::Msgpack).await?;
    let id = old.connection_id().to_owned();
    let key = connection_key(&old)?;
    old.attach("recovered").await?;
    publisher
        .publish_acked("recovered", json!([{"name": "seen"}]))
        .await?;
    let seen = old.next_message("recovered").await?;
    let serial = seen["channelSerial"]
        .as_str()
        .context("channelSerial")?
        .to_owned();
    drop(old);
    publisher
        .publish_acked("recovered", json!([{"name": "missed"}]))
        .await?;

    // What a recovery key holds: the connection key and each channel's serial.
    let query = format!("recover={}", encode_component(&key));
    let mut recovered = Client::connect(&node, &query, Format::Msgpack).await?;
    ensure!(
        recovered.connection_id() == id,
        "recover gave a new connectionId"
    );
    let attached = recovered
        .attach_with("recovered", json!({ "channelSerial": serial }))
        .await?;
    ensure!(
        attached["flags"].as_i64().unwrap_or(0) & RESUMED != 0,
        "{attached}"
    );
    let got = recovered.collect_messages("recovered", 1).await?;
    ensure!(names(&got) == ["missed"], "recovered {:?}", names(&got));
    Ok(())
}

#[tokio::test]
async fn a_realtime_publish_with_an_explicit_id_repeated_is_delivered_once() -> Result<()> {
    let node = Node::start().await?;
    let mut watcher = Client::connect(&node, "", Format::Json).await?;
    watcher.attach("explicit").await?;
    let mut client = Client::connect(&node, "", Format::Msgpack).await?;
    let message = json!([{"id": "mine:1", "name": "once"}]);
    let first = client.publish_acked("explicit", message.clone()).await?;
    let again = client.publish_acked("explicit", message).await?;
    ensure!(
        first["res"] == again["res"],
        "other serials: {first} vs {again}"
    );
    client
        .publish_acked("explicit", json!([{"name": "after"}]))
        .await?;
    let seen = watcher.collect_messages("explicit", 2).await?;
    ensure!(
        names(&seen) == ["once", "after"],
        "delivered {:?}",
        names(&seen)
    );
    Ok(())
}
