//! The REST API on the client port (protocol.md §7), through reqwest.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use starling_tests::rest::{self, basic, content_type, msgpack_body, next_link, to_msgpack};
use starling_tests::wire::bin_json;
use starling_tests::{Client, Format, Node};

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since.as_millis() as i64
}

/// Checks an error response as ably-js needs it: the status, a body whose content type
/// is exactly `application/json` (with a charset the Node client loses the code),
/// the full ErrorInfo, and the `X-Ably-ErrorCode` header.
async fn assert_rest_error(response: Response, status: u16, code: i64) -> Result<()> {
    let got = response.status();
    let headers = response.headers().clone();
    let body = response.text().await?;
    ensure!(
        got.as_u16() == status,
        "expected {status}, got {got}: {body}"
    );
    ensure!(
        content_type(&headers) == Some(rest::JSON),
        "content-type must be exactly application/json, got {:?}",
        content_type(&headers)
    );
    let body: Value = serde_json::from_str(&body).with_context(|| format!("error body {body}"))?;
    let error = &body["error"];
    ensure!(error["code"] == code, "expected code {code}: {body}");
    ensure!(error["statusCode"] == status, "{body}");
    ensure!(error["message"].is_string(), "{body}");
    let header = headers
        .get("x-ably-errorcode")
        .and_then(|v| v.to_str().ok());
    ensure!(
        header == Some(code.to_string().as_str()),
        "X-Ably-ErrorCode {header:?}"
    );
    Ok(())
}

async fn json_of(
    response: Response,
    status: StatusCode,
) -> Result<(Value, reqwest::header::HeaderMap)> {
    let got = response.status();
    let headers = response.headers().clone();
    let text = response.text().await?;
    ensure!(got == status, "expected {status}, got {got}: {text}");
    let body = serde_json::from_str(&text).with_context(|| format!("body {text}"))?;
    Ok((body, headers))
}

async fn publish(node: &Node, channel: &str, body: Value) -> Result<Value> {
    let response = rest::http()
        .post(node.url(&format!("/channels/{channel}/messages")))
        .header(AUTHORIZATION, basic(node.key()))
        .json(&body)
        .send()
        .await?;
    Ok(json_of(response, StatusCode::CREATED).await?.0)
}

async fn history(node: &Node, channel: &str, query: &str) -> Result<(Value, Option<String>)> {
    let response = rest::http()
        .get(node.url(&format!("/channels/{channel}/messages?{query}")))
        .header(AUTHORIZATION, basic(node.key()))
        .header(ACCEPT, rest::JSON)
        .send()
        .await?;
    let (body, headers) = json_of(response, StatusCode::OK).await?;
    Ok((body, next_link(&headers)?))
}

fn names(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| m["name"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn time_returns_the_server_clock_in_ms() -> Result<()> {
    let node = Node::start().await?;
    let before = now_ms();
    let response = rest::http().get(node.url("/time")).send().await?;
    let (body, _) = json_of(response, StatusCode::OK).await?;
    let after = now_ms();

    let time = body[0]
        .as_i64()
        .with_context(|| format!("[ms] expected: {body}"))?;
    ensure!(body.as_array().map(Vec::len) == Some(1), "{body}");
    ensure!(
        (before - 5_000..=after + 5_000).contains(&time),
        "time {time} not near {before}..{after}"
    );
    Ok(())
}

#[tokio::test]
async fn json_publish_of_one_message_or_an_array_answers_201_with_serials() -> Result<()> {
    let node = Node::start().await?;

    let one = publish(&node, "c", json!({"name": "single", "data": "x"})).await?;
    let serials = one["serials"]
        .as_array()
        .with_context(|| format!("{one}"))?;
    ensure!(serials.len() == 1 && serials[0].is_string(), "{one}");

    let many = publish(&node, "c", json!([{"name": "a"}, {"name": "b"}])).await?;
    let more = many["serials"]
        .as_array()
        .with_context(|| format!("{many}"))?;
    ensure!(more.len() == 2, "{many}");
    let (a, b) = (more[0].as_str(), more[1].as_str());
    ensure!(a.is_some() && a < b, "serials out of order: {many}");
    ensure!(
        serials[0].as_str() < a,
        "later publish has an earlier serial"
    );
    Ok(())
}

#[tokio::test]
async fn msgpack_publish_answers_201_in_msgpack() -> Result<()> {
    let node = Node::start().await?;

    let body = to_msgpack(&json!([{"name": "packed", "data": bin_json(&[1, 2, 3])}]));
    let response = rest::http()
        .post(node.url("/channels/c/messages"))
        .header(AUTHORIZATION, basic(node.key()))
        .header(CONTENT_TYPE, rest::MSGPACK)
        .header(ACCEPT, rest::MSGPACK)
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    ensure!(
        status == StatusCode::CREATED,
        "expected 201, got {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let decoded = msgpack_body(&bytes).context("the answer must be msgpack as asked")?;
    let serials = decoded["serials"]
        .as_array()
        .with_context(|| format!("{decoded}"))?;
    ensure!(serials.len() == 1 && serials[0].is_string(), "{decoded}");
    Ok(())
}

#[tokio::test]
async fn history_pages_newest_first_by_following_next_links() -> Result<()> {
    let node = Node::start().await?;
    for i in 0..5 {
        publish(&node, "paged", json!({"name": format!("m{i}")})).await?;
    }

    let mut seen = Vec::new();
    let mut query = "limit=2".to_owned();
    for page in 0.. {
        ensure!(page < 10, "pagination does not end: {seen:?}");
        let (body, next) = history(&node, "paged", &query).await?;
        let page_names = names(&body);
        ensure!(page_names.len() <= 2, "page {page} over the limit: {body}");
        seen.extend(page_names);
        match next {
            Some(next) => query = next,
            None => break,
        }
    }
    ensure!(seen == ["m4", "m3", "m2", "m1", "m0"], "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn history_forwards_returns_oldest_first() -> Result<()> {
    let node = Node::start().await?;
    publish(
        &node,
        "fwd",
        json!([{"name": "m0"}, {"name": "m1"}, {"name": "m2"}]),
    )
    .await?;

    let (body, next) = history(&node, "fwd", "direction=forwards").await?;
    ensure!(names(&body) == ["m0", "m1", "m2"], "{body}");
    ensure!(next.is_none(), "no next page expected, got {next:?}");
    let (body, _) = history(&node, "fwd", "direction=forwards&limit=2").await?;
    ensure!(names(&body) == ["m0", "m1"], "{body}");
    Ok(())
}

#[tokio::test]
async fn history_limit_over_1000_is_refused_with_40003() -> Result<()> {
    let node = Node::start().await?;
    let response = rest::http()
        .get(node.url("/channels/c/messages?limit=1001"))
        .header(AUTHORIZATION, basic(node.key()))
        .send()
        .await?;
    assert_rest_error(response, 400, 40003).await
}

#[tokio::test]
async fn wrong_key_is_refused_with_401_and_40101() -> Result<()> {
    let node = Node::start().await?;
    let (name, _) = node.key().split_once(':').context("key has a secret")?;

    for key in [format!("{name}:wrong"), "nosuch.key:secret".to_owned()] {
        let response = rest::http()
            .post(node.url("/channels/c/messages"))
            .header(AUTHORIZATION, basic(&key))
            .json(&json!({"name": "x"}))
            .send()
            .await?;
        assert_rest_error(response, 401, 40101)
            .await
            .with_context(|| format!("key {key}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn bad_channel_name_is_refused_with_40010() -> Result<()> {
    let node = Node::start().await?;
    let response = rest::http()
        .post(node.url("/channels/%3Abad/messages"))
        .header(AUTHORIZATION, basic(node.key()))
        .json(&json!({"name": "x"}))
        .send()
        .await?;
    assert_rest_error(response, 400, 40010).await
}

#[tokio::test]
async fn oversized_publish_is_refused_with_413_and_40009() -> Result<()> {
    let node = Node::start().await?;
    let response = rest::http()
        .post(node.url("/channels/c/messages"))
        .header(AUTHORIZATION, basic(node.key()))
        .json(&json!({"data": "x".repeat(70_000)}))
        .send()
        .await?;
    assert_rest_error(response, 413, 40009).await
}

#[tokio::test]
async fn channel_status_counts_the_attached_connections() -> Result<()> {
    let node = Node::start().await?;
    let mut attached = Vec::new();
    for format in [Format::Json, Format::Msgpack, Format::Json] {
        let mut client = Client::connect(&node, "", format).await?;
        client.attach("occupied").await?;
        attached.push(client);
    }
    // Connected but not attached: not an occupant.
    let _idle = Client::connect(&node, "", Format::Json).await?;

    let response = rest::http()
        .get(node.url("/channels/occupied"))
        .header(AUTHORIZATION, basic(node.key()))
        .header(ACCEPT, rest::JSON)
        .send()
        .await?;
    let (body, _) = json_of(response, StatusCode::OK).await?;
    ensure!(body["channelId"] == "occupied", "{body}");
    let connections = &body["status"]["occupancy"]["metrics"]["connections"];
    ensure!(*connections == 3, "expected 3 connections: {body}");
    Ok(())
}

#[tokio::test]
async fn realtime_publish_shows_up_in_rest_history() -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", Format::Json).await?;
    let ack = client
        .publish_acked("mixed", json!([{"name": "live", "data": "hello"}]))
        .await?;
    let serial = &ack["res"][0]["serials"][0];

    let (body, _) = history(&node, "mixed", "").await?;
    let message = &body[0];
    ensure!(
        message["name"] == "live" && message["data"] == "hello",
        "{body}"
    );
    ensure!(
        message["serial"] == *serial,
        "serial differs from the ACK's {serial}: {body}"
    );
    let id = format!("{}:0:0", client.connection_id());
    ensure!(message["id"] == id.as_str(), "id should be {id}: {body}");
    Ok(())
}

#[tokio::test]
async fn binary_published_over_msgpack_comes_back_as_base64_in_json_history() -> Result<()> {
    let node = Node::start().await?;
    let mut client = Client::connect(&node, "", Format::Msgpack).await?;
    client
        .publish_acked(
            "bin",
            json!([{"name": "b", "data": bin_json(&[0, 1, 2, 255])}]),
        )
        .await?;

    let (body, _) = history(&node, "bin", "").await?;
    let message = &body[0];
    ensure!(message["data"] == "AAEC/w==", "{body}");
    ensure!(message["encoding"] == "base64", "{body}");

    let response = rest::http()
        .get(node.url("/channels/bin/messages"))
        .header(AUTHORIZATION, basic(node.key()))
        .header(ACCEPT, rest::MSGPACK)
        .send()
        .await?;
    ensure!(response.status() == StatusCode::OK, "{}", response.status());
    let decoded = msgpack_body(&response.bytes().await?)?;
    let message = &decoded[0];
    ensure!(message["data"] == bin_json(&[0, 1, 2, 255]), "{decoded}");
    ensure!(
        message.get("encoding").is_none_or(Value::is_null),
        "{decoded}"
    );
    Ok(())
}
