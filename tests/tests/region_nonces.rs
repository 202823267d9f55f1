//! A TokenRequest nonce is accepted once per region (protocol.md §7.3, 40105), not
//! once per node: a signed request accepted by one node of a 3-node region is refused
//! as a replay by every other node, also after the node that owned the nonce on the
//! ring is SIGKILLed (its copy holder remembers it).

use anyhow::{ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::Value;
use starling_tests::dev::{DevNode, DevRegion};
use starling_tests::token::{self, now_ms, signed_request, Ask};

/// Where the nonce claims show who owns them (`nonce claimed at its owner`).
const LOG: &str = "info,starling_node::auth::nonce_claims=debug";

async fn submit(node: &DevNode, key: &str, request: &Value) -> Result<(StatusCode, Value)> {
    let name = key.split_once(':').context("key")?.0;
    token::post_request(&node.url(""), name, request, None).await
}

fn ensure_replay(node: &DevNode, (status, body): &(StatusCode, Value)) -> Result<()> {
    ensure!(
        *status == StatusCode::UNAUTHORIZED && body["error"]["code"] == 40105,
        "{} should refuse the replay with 40105: {status} {body}",
        node.id
    );
    Ok(())
}

/// The node whose log shows it took `nonce` as its owner.
fn owner_of<'a>(nodes: &'a [DevNode], nonce: &str) -> Result<&'a DevNode> {
    let field = format!("nonce={nonce} ");
    let owners: Vec<_> = (nodes.iter())
        .filter(|n| {
            n.log()
                .lines()
                .any(|l| l.contains("nonce claimed at its owner") && l.contains(&field))
        })
        .collect();
    ensure!(owners.len() == 1, "one owner of {nonce}: {owners:?}");
    Ok(owners[0])
}

#[tokio::test]
async fn a_nonce_accepted_by_one_node_is_a_replay_at_every_other_even_after_its_owner_dies(
) -> Result<()> {
    let mut region = DevRegion::start(3, LOG).await?;
    let key = region.key().to_owned();
    let nodes = region.nodes().to_vec();

    eprintln!("phase: accepted at the first node, refused at the others");
    let nonce = token::nonce();
    let request = signed_request(&key, &Ask::default(), now_ms(), &nonce);
    let (status, details) = submit(&nodes[0], &key, &request).await?;
    ensure!(status == StatusCode::OK, "first use: {status} {details}");
    for node in &nodes[1..] {
        ensure_replay(node, &submit(node, &key, &request).await?)?;
    }

    eprintln!("phase: a fresh nonce at each node is still accepted");
    for node in &nodes {
        let fresh = signed_request(&key, &Ask::default(), now_ms(), &token::nonce());
        let (status, body) = submit(node, &key, &fresh).await?;
        ensure!(status == StatusCode::OK, "{}: {status} {body}", node.id);
    }

    eprintln!("phase: the nonce's owner is SIGKILLed; the survivors still refuse it");
    let owner = owner_of(&nodes, &nonce)?.id.clone();
    region.kill(&owner)?;
    let survivors = region.nodes().to_vec();
    for node in &survivors {
        ensure_replay(node, &submit(node, &key, &request).await?)?;
    }

    eprintln!("phase: once the survivors noticed, they still refuse it");
    region.wait_meshed(2).await?;
    for node in &survivors {
        ensure_replay(node, &submit(node, &key, &request).await?)?;
    }
    Ok(())
}
