//! The realtime protocol over WebSocket, each test once per wire format
//! (protocol.md §1, §2, §5).

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use starling_tests::client::is_action;
use starling_tests::wire::{as_bin, bin_json};
use starling_tests::{action, flags, Client, Format, Node, WAIT};

starling_tests::both_formats! {
    connect_sends_connected_with_connection_details,
    heartbeat_with_an_id_is_echoed,
    attach_grants_default_modes_and_a_channel_serial,
    attach_with_modes_param_grants_only_subscribe_and_echoes_params,
    detach_is_answered_with_detached,
    publish_is_acked_with_ordered_serials_per_message,
    messages_fan_out_to_every_subscriber_with_ids_serials_and_channel_serial,
    every_subscriber_sees_a_publishers_messages_in_publish_order,
    echo_false_keeps_the_publishers_own_messages_from_it,
    binary_data_reaches_json_as_base64_and_msgpack_as_bin,
    publish_without_attaching_is_acked,
    close_is_answered_with_closed_then_the_socket_closes,
}

async fn connect_sends_connected_with_connection_details(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let client = Client::connect(&node, "", format).await?;
    let connected = client.connected();

    ensure!(is_action(connected, action::CONNECTED), "{connected}");
    let id = connected["connectionId"]
        .as_str()
        .context("top-level connectionId")?;
    ensure!(!id.is_empty() && !id.contains(':'), "connectionId {id:?}");
    ensure!(
        connected.get("error").is_none(),
        "unexpected error: {connected}"
    );

    let details = &connected["connectionDetails"];
    let key = details["connectionKey"].as_str().context("connectionKey")?;
    ensure!(!key.is_empty(), "empty connectionKey");
    for field in ["maxIdleInterval", "connectionStateTtl", "maxMessageSize"] {
        let value = details[field].as_u64();
        ensure!(
            value.is_some_and(|v| v > 0),
            "{field} must be a positive integer: {details}"
        );
    }
    ensure!(details["maxMessageSize"] == 65536, "{details}");
    Ok(())
}

async fn heartbeat_with_an_id_is_echoed(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", format).await?;

    client
        .send(&json!({"action": action::HEARTBEAT, "id": "123"}))
        .await?;
    let reply = client
        .recv_until(
            |f| is_action(f, action::HEARTBEAT) && f.get("id").is_some(),
            WAIT,
        )
        .await?;
    ensure!(reply == json!({"action": 0, "id": "123"}), "{reply}");
    Ok(())
}

async fn attach_grants_default_modes_and_a_channel_serial(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", format).await?;

    let attached = client.attach("room").await?;
    ensure!(attached["channel"] == "room", "{attached}");
    let granted = attached["flags"].as_i64().context("flags")? & flags::ALL_MODES;
    ensure!(
        granted == flags::DEFAULT_MODES,
        "granted modes {granted} instead of {}: {attached}",
        flags::DEFAULT_MODES
    );
    ensure!(attached["channelSerial"].is_string(), "{attached}");
    Ok(())
}

async fn attach_with_modes_param_grants_only_subscribe_and_echoes_params(
    format: Format,
) -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", format).await?;

    let attached = client
        .attach_with("room", json!({"params": {"modes": "subscribe"}}))
        .await?;
    ensure!(is_action(&attached, action::ATTACHED), "{attached}");
    let granted = attached["flags"].as_i64().context("flags")? & flags::ALL_MODES;
    ensure!(granted == flags::SUBSCRIBE, "granted {granted}: {attached}");
    ensure!(
        attached["params"] == json!({"modes": "subscribe"}),
        "{attached}"
    );
    Ok(())
}

async fn detach_is_answered_with_detached(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", format).await?;
    client.attach("room").await?;

    client
        .send(&json!({"action": action::DETACH, "channel": "room"}))
        .await?;
    let reply = client.recv_until(|f| f["channel"] == "room", WAIT).await?;
    ensure!(is_action(&reply, action::DETACHED), "{reply}");
    Ok(())
}

async fn publish_is_acked_with_ordered_serials_per_message(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", format).await?;
    client.attach("room").await?;

    let first = client
        .publish("room", json!([{"data": "a"}, {"data": "b"}]))
        .await?;
    ensure!(first == 0);
    let ack = client.ack_for(0).await?;
    ensure!(is_action(&ack, action::ACK), "{ack}");
    ensure!(ack["msgSerial"] == 0 && ack["count"] == 1, "{ack}");
    let res = ack["res"].as_array().context("ACK without res")?;
    ensure!(res.len() == 1, "{ack}");
    let serials: Vec<&str> = res[0]["serials"]
        .as_array()
        .context("res[0].serials")?
        .iter()
        .map(|s| s.as_str().context("serial is a string"))
        .collect::<Result<_>>()?;
    ensure!(serials.len() == 2, "{ack}");
    ensure!(serials[0] < serials[1], "serials out of order: {serials:?}");

    let second = client.publish("room", json!([{"data": "c"}])).await?;
    let ack = client.ack_for(second).await?;
    ensure!(
        is_action(&ack, action::ACK) && ack["msgSerial"] == 1,
        "{ack}"
    );
    let later = ack["res"][0]["serials"][0].as_str().context("serial")?;
    ensure!(later > serials[1], "{later} should follow {serials:?}");
    Ok(())
}

async fn messages_fan_out_to_every_subscriber_with_ids_serials_and_channel_serial(
    format: Format,
) -> Result<()> {
    let node = Node::start().await?;
    let mut subscribers = Vec::new();
    for sub_format in [Format::Json, Format::Msgpack, format] {
        let mut sub = Client::connect(&node, "", sub_format).await?;
        sub.attach("fan").await?;
        subscribers.push(sub);
    }
    let mut publisher = Client::connect(&node, "", format).await?;
    let publisher_id = publisher.connection_id().to_owned();

    publisher
        .publish("fan", json!([{"name": "warmup"}]))
        .await?;
    publisher.ack_for(0).await?;
    // ably-js puts its computed `size` on every message; it must not come back.
    let messages = json!([
        {"name": "one", "data": "first", "size": 5},
        {"name": "two", "data": "second", "size": 6},
    ]);
    let msg_serial = publisher.publish("fan", messages).await?;
    let ack = publisher.ack_for(msg_serial).await?;
    let acked = &ack["res"][0]["serials"];

    for (i, sub) in subscribers.iter_mut().enumerate() {
        let warmup = sub.next_message("fan").await?;
        ensure!(warmup["messages"][0]["name"] == "warmup", "{warmup}");
        let frame = sub
            .next_message("fan")
            .await
            .with_context(|| format!("subscriber {i} ({:?})", sub.format()))?;
        let channel_serial = frame["channelSerial"].as_str().unwrap_or_default();
        ensure!(!channel_serial.is_empty(), "no channelSerial: {frame}");

        let got = frame["messages"].as_array().context("messages")?;
        ensure!(got.len() == 2, "{frame}");
        for (index, (message, name)) in got.iter().zip(["one", "two"]).enumerate() {
            ensure!(message["name"] == name, "order: {frame}");
            let id = format!("{publisher_id}:{msg_serial}:{index}");
            ensure!(message["id"] == id.as_str(), "id should be {id}: {message}");
            ensure!(
                message["connectionId"] == publisher_id.as_str(),
                "{message}"
            );
            ensure!(message["timestamp"].is_u64(), "timestamp: {message}");
            ensure!(
                message["serial"] == acked[index],
                "serial: {message} vs {ack}"
            );
            ensure!(message.get("size").is_none(), "size echoed: {message}");
        }
    }
    Ok(())
}

async fn every_subscriber_sees_a_publishers_messages_in_publish_order(
    format: Format,
) -> Result<()> {
    const COUNT: usize = 50;
    let node = Node::start().await?;
    let mut subscribers = Vec::new();
    for sub_format in [format, format.other(), format] {
        let mut sub = Client::connect(&node, "", sub_format).await?;
        sub.attach("order").await?;
        subscribers.push(sub);
    }
    let mut publisher = Client::connect(&node, "", format).await?;

    // All frames go out back to back, before any ACK is awaited.
    for i in 0..COUNT {
        publisher
            .publish("order", json!([{"name": format!("m{i}"), "data": i}]))
            .await?;
    }
    publisher.ack_for(COUNT as i64 - 1).await?;

    let expected: Vec<String> = (0..COUNT).map(|i| format!("m{i}")).collect();
    for (i, sub) in subscribers.iter_mut().enumerate() {
        let messages = sub.collect_messages("order", COUNT).await?;
        let names: Vec<&str> = messages
            .iter()
            .map(|m| m["name"].as_str().unwrap_or("?"))
            .collect();
        ensure!(names == expected, "subscriber {i} order: {names:?}");
        let serials: Vec<&str> = messages
            .iter()
            .map(|m| m["serial"].as_str().unwrap_or(""))
            .collect();
        ensure!(
            serials.windows(2).all(|w| w[0] < w[1]),
            "subscriber {i} serials not increasing: {serials:?}"
        );
    }
    Ok(())
}

async fn echo_false_keeps_the_publishers_own_messages_from_it(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let mut publisher = Client::connect(&node, "echo=false", format).await?;
    publisher.attach("quiet").await?;
    let mut other = Client::connect(&node, "", format.other()).await?;
    other.attach("quiet").await?;

    publisher
        .publish_acked("quiet", json!([{"name": "own"}]))
        .await?;
    let seen = other.next_message("quiet").await?;
    ensure!(seen["messages"][0]["name"] == "own", "{seen}");

    // The channel's frames arrive in order, so if the publisher's own message had been
    // sent to it, it would come before this one.
    other
        .publish_acked("quiet", json!([{"name": "from-other"}]))
        .await?;
    let first = publisher.next_message("quiet").await?;
    ensure!(
        first["messages"][0]["name"] == "from-other",
        "publisher with echo=false received {first}"
    );
    Ok(())
}

async fn binary_data_reaches_json_as_base64_and_msgpack_as_bin(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let mut json_sub = Client::connect(&node, "", Format::Json).await?;
    json_sub.attach("bin").await?;
    let mut msgpack_sub = Client::connect(&node, "", Format::Msgpack).await?;
    msgpack_sub.attach("bin").await?;
    let mut publisher = Client::connect(&node, "", format).await?;

    let data = match format {
        // A real msgpack `bin`.
        Format::Msgpack => json!({"name": "b", "data": bin_json(&[0, 1, 2])}),
        Format::Json => json!({"name": "b", "data": "AAEC", "encoding": "base64"}),
    };
    publisher.publish_acked("bin", json!([data])).await?;

    let frame = json_sub.next_message("bin").await?;
    let message = &frame["messages"][0];
    ensure!(message["data"] == "AAEC", "JSON subscriber: {message}");
    ensure!(
        message["encoding"] == "base64",
        "JSON subscriber: {message}"
    );

    let frame = msgpack_sub.next_message_frame("bin").await?;
    let message = &frame.value["messages"][0];
    ensure!(
        as_bin(&message["data"]) == Some(vec![0, 1, 2]),
        "msgpack subscriber should get bin [0,1,2]: {message}"
    );
    ensure!(
        message.get("encoding").is_none_or(Value::is_null),
        "msgpack subscriber should get no encoding: {message}"
    );
    Ok(())
}

async fn publish_without_attaching_is_acked(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let mut subscriber = Client::connect(&node, "", format.other()).await?;
    subscriber.attach("loose").await?;
    let mut publisher = Client::connect(&node, "", format).await?;

    let ack = publisher
        .publish_acked("loose", json!([{"name": "unattached"}]))
        .await?;
    ensure!(ack["msgSerial"] == 0, "{ack}");
    let frame = subscriber.next_message("loose").await?;
    ensure!(frame["messages"][0]["name"] == "unattached", "{frame}");
    Ok(())
}

async fn close_is_answered_with_closed_then_the_socket_closes(format: Format) -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", format).await?;
    client.attach("room").await?;

    client.send(&json!({"action": action::CLOSE})).await?;
    let reply = client
        .recv_until(|f| !is_action(f, action::HEARTBEAT), WAIT)
        .await?;
    ensure!(reply == json!({"action": action::CLOSED}), "{reply}");
    client.expect_closed(WAIT).await?;
    Ok(())
}
