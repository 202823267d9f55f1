//! The client TLS listener (`[client_tls]`): wss and https beside the plain listener,
//! serving the same node; a certificate replaced on disk is shown to new handshakes
//! without a restart while open connections carry on; a missing or bad certificate
//! stops startup with an error naming the file.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use starling_tests::tls::{self, TestCa};
use starling_tests::{run_to_exit, Client, Format, Node, NodeOptions, WAIT};
use tokio::time::Instant;

fn tls_config(cert: &Path, key: &Path) -> String {
    format!(
        "[client_tls]\nlisten = \"127.0.0.1:0\"\ncert = {cert:?}\nkey = {key:?}\nreload_check_ms = 100\n"
    )
}

/// A node with a TLS listener whose certificate files live in `dir`.
async fn node_with_tls(dir: &Path, cert: &tls::ServerCert) -> Result<Node> {
    let (cert, key) = cert.install(dir)?;
    Node::start_with(NodeOptions::default().config(tls_config(&cert, &key))).await
}

#[tokio::test]
async fn wss_and_https_serve_the_node_and_a_replaced_certificate_is_used_without_a_restart(
) -> Result<()> {
    let ca = TestCa::new("client TLS test CA")?;
    let first = ca.issue("first")?;
    let files = tempfile::tempdir()?;
    let node = node_with_tls(files.path(), &first).await?;
    let tls_addr = node.tls_addr()?;
    let connector = ca.connector()?;

    eprintln!("phase: https and wss on the TLS listener");
    let (status, body) = tls::https_get(&connector, tls_addr, "/time").await?;
    ensure!(
        status == 200,
        "GET /time over https answered {status}: {body}"
    );
    let time: Value = serde_json::from_str(&body).context("the /time body")?;
    ensure!(time[0].is_i64(), "GET /time over https: {body}");
    let (_, shown) = tls::connect(&connector, tls_addr).await?;
    ensure!(
        shown == first.der()?,
        "the TLS listener shows the configured certificate"
    );

    let mut secure = tls::connect_wss(&connector, tls_addr, node.key(), Format::Msgpack).await?;
    secure.attach("tls-channel").await?;
    let mut plain = Client::connect(&node, "", Format::Json).await?;
    plain
        .publish_acked("tls-channel", json!([{"name": "before", "data": 1}]))
        .await?;
    let frame = secure.next_message("tls-channel").await?;
    ensure!(
        frame["messages"][0]["name"] == "before",
        "a wss subscriber receives what a plain publisher sent: {frame}"
    );

    eprintln!("phase: the certificate files are replaced");
    let second = ca.issue("second")?;
    second.install(files.path())?;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, shown) = tls::connect(&connector, tls_addr).await?;
        if shown == second.der()? {
            break;
        }
        ensure!(
            shown == first.der()?,
            "the listener shows a certificate it was never given"
        );
        ensure!(
            Instant::now() < deadline,
            "new handshakes still show the first certificate after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    eprintln!("phase: the connection opened before the swap carries on; new ones work");
    plain
        .publish_acked("tls-channel", json!([{"name": "after", "data": 2}]))
        .await?;
    let frame = secure.next_message("tls-channel").await?;
    ensure!(
        frame["messages"][0]["name"] == "after",
        "the wss connection opened before the swap still receives: {frame}"
    );
    secure
        .publish_acked("tls-channel", json!([{"name": "from-old-socket"}]))
        .await
        .context("the wss connection opened before the swap still publishes")?;
    let mut fresh = tls::connect_wss(&connector, tls_addr, node.key(), Format::Json).await?;
    fresh.attach("tls-channel").await?;
    let (status, _) = tls::https_get(&connector, tls_addr, "/time").await?;
    ensure!(status == 200, "https after the swap answered {status}");
    node.assert_running()?;
    Ok(())
}

#[tokio::test]
async fn replaced_files_that_do_not_load_leave_the_old_certificate_in_place() -> Result<()> {
    let ca = TestCa::new("client TLS test CA")?;
    let first = ca.issue("first")?;
    let files = tempfile::tempdir()?;
    let node = node_with_tls(files.path(), &first).await?;
    let connector = ca.connector()?;

    // A certificate whose key is another certificate's: they don't match.
    let other = ca.issue("other")?;
    std::fs::write(files.path().join("cert.pem"), &other.cert_pem)?;
    wait_for_log(&node, "do not load").await?;

    let (_, shown) = tls::connect(&connector, node.tls_addr()?).await?;
    ensure!(
        shown == first.der()?,
        "a broken replacement keeps the old certificate"
    );
    tls::connect_wss(&connector, node.tls_addr()?, node.key(), Format::Json).await?;
    Ok(())
}

async fn wait_for_log(node: &Node, needle: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !node.log().contains(needle) {
        ensure!(Instant::now() < deadline, "no {needle:?} in the node's log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_or_unusable_certificate_stops_startup_naming_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("absent.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM")?;
    let ca = TestCa::new("client TLS test CA")?;
    let key = dir.path().join("key.pem");
    std::fs::write(&key, ca.issue("k")?.key_pem)?;

    for cert in [&missing, &garbage] {
        let config = dir.path().join("config.toml");
        std::fs::write(&config, tls_config(cert, &key))?;
        let data = dir.path().join("data");
        let output = run_to_exit(
            &[
                "--config",
                config.to_str().context("path")?,
                "--data-dir",
                data.to_str().context("path")?,
                "--listen",
                "127.0.0.1:0",
            ],
            WAIT,
        )
        .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "started with {cert:?}: {stderr}");
        let name = cert.file_name().context("name")?.to_string_lossy();
        ensure!(stderr.contains(&*name), "the error names {name}: {stderr}");
    }
    Ok(())
}
