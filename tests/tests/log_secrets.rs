//! Logs never contain a key secret, a token or the admin token (architecture.md,
//! Invariants), even at `debug` or `trace` and even when a client puts a secret where it does
//! not belong. One node runs every authentication path the tests know, then its log
//! is searched for each secret it saw.

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use reqwest::header::AUTHORIZATION;
use serde_json::{json, Value};
use starling_tests::client::{encode_component, is_action};
use starling_tests::rest::{self, basic, bearer};
use starling_tests::token::{self, now_ms, Ask};
use starling_tests::{action, Client, Format, Node, NodeOptions, WAIT};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Everything secret the run handed the node, with what each one is.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: &str, secret: &str) {
        self.0.push((what.to_owned(), secret.to_owned()));
    }

    /// A token, and its signature alone: a log that cut a token short would still
    /// show that.
    fn add_token(&mut self, what: &str, token: &str) {
        self.add(what, token);
        if let Some((_, signature)) = token.rsplit_once('.') {
            self.add(&format!("{what} (signature)"), signature);
        }
    }

    /// Fails naming each secret found and the first line showing it (masked, so the
    /// failure message does not spread it further).
    fn ensure_absent_from(&self, log: &str) -> Result<()> {
        let leaked: Vec<_> = (self.0.iter())
            .filter_map(|(what, secret)| {
                let line = log.lines().find(|line| line.contains(secret.as_str()))?;
                let masked = (self.0.iter()).fold(line.to_owned(), |line, (_, secret)| {
                    line.replace(secret.as_str(), "<SECRET>")
                });
                Some(format!("{what}: {masked}"))
            })
            .collect();
        ensure!(
            leaked.is_empty(),
            "the node log shows:\n{}",
            leaked.join("\n")
        );
        Ok(())
    }
}

fn secret_of(key: &str) -> &str {
    key.split_once(':').expect("key is name:secret").1
}

fn token_of(details: &Value) -> Result<String> {
    let token = details["token"].as_str().context("TokenDetails.token")?;
    Ok(token.to_owned())
}

fn alice() -> Ask {
    Ask {
        client_id: Some("alice".into()),
        ..Ask::default()
    }
}

/// An Ably JWT signed with the key's secret, as an app server would make one.
fn jwt(key: &str) -> Result<String> {
    use hmac::{Hmac, Mac};
    let (kid, secret) = key.split_once(':').context("key")?;
    let now = now_ms() / 1000;
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let claims = json!({"iat": now, "exp": now + 60, "x-ably-capability": r#"{"*":["*"]}"#});
    let signed = format!(
        "{}.{}",
        B64URL.encode(serde_json::to_vec(&header)?),
        B64URL.encode(serde_json::to_vec(&claims)?)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())?;
    mac.update(signed.as_bytes());
    let signature = B64URL.encode(mac.finalize().into_bytes());
    Ok(format!("{signed}.{signature}"))
}

/// Keys: the node's, an app's made through the admin API, and a wrong secret.
async fn use_keys(node: &Node, secrets: &mut Secrets) -> Result<()> {
    let response = rest::http()
        .post(node.url("/apps"))
        .header(AUTHORIZATION, bearer(node.admin_token()))
        .json(&json!({"keys": [{}]}))
        .send()
        .await?;
    let body: Value = response.json().await?;
    let created = body["keys"][0]["keyStr"].as_str().context("keyStr")?;
    secrets.add("a created app's key secret", secret_of(created));

    for key in [node.key(), created] {
        let mut client = Client::connect_with_key(node.addr(), key, "", Format::Json).await?;
        client
            .publish_acked("logged", json!([{"name": "k"}]))
            .await?;
    }

    let (name, _) = node.key().split_once(':').context("key")?;
    let guessed = "guessed-secret-Zq81x";
    secrets.add("a wrong secret", guessed);
    let query = format!("key={}", encode_component(&format!("{name}:{guessed}")));
    let mut refused = Client::open(node.addr(), &query, Format::Json).await?;
    refused.expect_closed(WAIT).await?;
    let history = rest::http()
        .get(node.url("/channels/logged/messages"))
        .header(AUTHORIZATION, basic(&format!("{name}:{guessed}")))
        .send()
        .await?;
    ensure!(
        history.status() == 401,
        "wrong secret on REST: {}",
        history.status()
    );
    Ok(())
}

/// Tokens: signed and unsigned requests, WebSocket, in-band AUTH (accepted and
/// refused), REST bearer, a JWT, and a revocation.
async fn use_tokens(node: &Node, secrets: &mut Secrets) -> Result<()> {
    let base = node.url("");
    let first = token_of(&token::token(&base, node.key(), &alice()).await?)?;
    let name = node.key().split_once(':').context("key")?.0;
    let unsigned = json!({"clientId": "alice"});
    let (_, second) = token::post_request(&base, name, &unsigned, Some(&basic(node.key()))).await?;
    let second = token_of(&second)?;
    let bob = Ask {
        client_id: Some("bob".into()),
        ..Ask::default()
    };
    let bob = token_of(&token::token(&base, node.key(), &bob).await?)?;
    let jwt = jwt(node.key())?;
    for (what, token) in [
        ("a token", &first),
        ("a renewed token", &second),
        ("bob's token", &bob),
    ] {
        secrets.add_token(what, token);
    }
    secrets.add_token("a JWT", &jwt);
    secrets.add("a token as a REST bearer", &BASE64.encode(&first));

    let mut client = Client::connect_with_token(node.addr(), &first, "", Format::Msgpack).await?;
    client.attach("tokens").await?;
    let renew = |token: &str| json!({"action": action::AUTH, "auth": {"accessToken": token}});
    client.send(&renew(&second)).await?;
    client
        .recv_until(|f| is_action(f, action::CONNECTED), WAIT)
        .await?;
    client.send(&renew(&bob)).await?;
    client
        .expect_closed(WAIT)
        .await
        .context("bob's token is refused")?;

    Client::connect_with_token(node.addr(), &jwt, "", Format::Json).await?;
    for header in [bearer(&BASE64.encode(&first)), bearer("bm90IGEgdG9rZW4=")] {
        rest::http()
            .get(node.url("/channels/tokens/messages"))
            .header(AUTHORIZATION, header)
            .send()
            .await?;
    }
    token::revoke(&base, node.key(), &["clientId:alice"]).await?;
    Ok(())
}

/// A client that puts a token where the protocol expects something else gets a
/// decoding error; the log may say so, but not with the token in it.
async fn misplace_a_token(node: &Node, secrets: &mut Secrets) -> Result<()> {
    let token = token_of(&token::token(&node.url(""), node.key(), &Ask::default()).await?)?;
    secrets.add_token("a misplaced token", &token);
    let frames = [
        json!({"action": action::AUTH, "auth": token}).to_string(),
        json!({"action": token}).to_string(),
        format!("{{\"action\": 17, \"auth\": {{\"accessToken\": \"{token}\""),
    ];
    for frame in frames {
        let mut client = Client::connect(node, "", Format::Json).await?;
        client.send_raw(WsMessage::text(frame)).await?;
        client.expect_closed(WAIT).await?;
    }
    let name = node.key().split_once(':').context("key")?.0;
    for body in [json!(token), json!({"keyName": name, "ttl": token})] {
        token::post_request(&node.url(""), name, &body, Some(&basic(node.key()))).await?;
    }
    Ok(())
}

#[tokio::test]
async fn debug_logs_show_no_key_secret_token_or_admin_token() -> Result<()> {
    logs_at_level_show_no_secret("debug", "DEBUG").await
}

/// At `trace` the WebSocket library would log every frame it reads, in-band AUTH
/// tokens included; the node caps it (and tokio-tungstenite) at `info` unless
/// `RUST_LOG` names them itself.
#[tokio::test]
async fn trace_logs_show_no_key_secret_token_or_admin_token() -> Result<()> {
    logs_at_level_show_no_secret("trace", "TRACE").await
}

/// Runs every path that hands the node a secret with `RUST_LOG=level`, then searches
/// the log (which must hold lines marked `marker`, or the search proves nothing).
async fn logs_at_level_show_no_secret(level: &str, marker: &str) -> Result<()> {
    let node = Node::start_with(NodeOptions::default().env("RUST_LOG", level)).await?;
    let mut secrets = Secrets::default();
    secrets.add("the node's key secret", secret_of(node.key()));
    secrets.add("the admin token", node.admin_token());
    let stored = std::fs::read_to_string(node.dir().join("data/secrets.json"))?;
    let stored: Value = serde_json::from_str(&stored)?;
    let cluster = stored["cluster_secret"]
        .as_str()
        .context("cluster_secret")?;
    secrets.add("the cluster secret", cluster);

    eprintln!("phase: keys, tokens, and secrets where they do not belong");
    use_keys(&node, &mut secrets).await?;
    use_tokens(&node, &mut secrets).await?;
    misplace_a_token(&node, &mut secrets).await?;

    eprintln!("phase: the log, at {level}, shows none of them");
    node.assert_running()?;
    let log = node.log();
    ensure!(
        log.contains(marker) && log.contains("re-authorised"),
        "the log was not written at {level}, so the search proves nothing"
    );
    secrets.ensure_absent_from(&log)
}
