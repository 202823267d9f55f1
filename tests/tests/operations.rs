//! What an operator relies on: health endpoints and configuration checking.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::Value;
use starling_tests::{rest, run_to_exit, Node};

#[tokio::test]
async fn health_answers_200_with_a_json_body_when_ready() -> Result<()> {
    let node = Node::start().await?;
    let response = rest::http().get(node.url("/health")).send().await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status == StatusCode::OK, "{status} {text}");
    let body: Value = serde_json::from_str(&text).with_context(|| format!("JSON body: {text}"))?;
    ensure!(body.is_object(), "{body}");
    Ok(())
}

#[tokio::test]
async fn health_live_answers_200_while_running() -> Result<()> {
    let node = Node::start().await?;
    let response = rest::http().get(node.url("/health/live")).send().await?;
    ensure!(response.status() == StatusCode::OK, "{}", response.status());
    Ok(())
}

#[tokio::test]
async fn unknown_config_key_stops_startup_and_names_the_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[node]\nbogus = 1\n")?;
    let data = dir.path().join("data");

    let output = run_to_exit(
        &[
            "--config",
            config.to_str().context("utf-8 path")?,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().context("utf-8 path")?,
        ],
        Duration::from_secs(20),
    )
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "started despite bogus key: {stderr}"
    );
    ensure!(
        stderr.contains("bogus"),
        "the error must name the key: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_single_node_reports_its_embedded_global_master_in_its_metrics() -> Result<()> {
    let node = Node::start().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = rest::http()
            .get(node.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let leads = text.contains("starling_raft_role{role=\"leader\"} 1");
        let term = text.lines().any(|l| l.starts_with("starling_raft_term "));
        let commit = text
            .lines()
            .any(|l| l.starts_with("starling_raft_commit_index "));
        if leads && term && commit {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the embedded member's raft role, term and commit index on /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
