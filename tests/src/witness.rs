//! A bystander that proves one client's misbehaviour hurt no one else (design.md,
//! promise 5): a subscriber attached before the trouble, and a publisher, both on a
//! channel of their own.

use anyhow::{bail, Context};
use serde_json::json;

use crate::{Client, Format, Node};

pub struct Witness {
    subscriber: Client,
    publisher: Client,
    channel: String,
    probes: usize,
}

impl Witness {
    /// Connects a JSON subscriber and a MessagePack publisher and proves the channel
    /// works once, so a later failure is the trouble's fault.
    pub async fn new(node: &Node) -> anyhow::Result<Witness> {
        let channel = "witness".to_owned();
        let mut subscriber = Client::connect(node, "", Format::Json).await?;
        subscriber.attach(&channel).await?;
        let publisher = Client::connect(node, "", Format::Msgpack).await?;
        let mut witness = Witness {
            subscriber,
            publisher,
            channel,
            probes: 0,
        };
        witness
            .assert_still_receiving(node)
            .await
            .context("witness before the trouble")?;
        Ok(witness)
    }

    /// The node still runs, and a message published now reaches the subscriber that
    /// was connected all along.
    pub async fn assert_still_receiving(&mut self, node: &Node) -> anyhow::Result<()> {
        node.assert_running()?;
        let name = format!("probe-{}", self.probes);
        self.probes += 1;

        self.publisher
            .publish_acked(&self.channel, json!([{"name": name, "data": "still here"}]))
            .await
            .context("witness publish")?;
        let frame = self
            .subscriber
            .next_message(&self.channel)
            .await
            .context("witness subscriber")?;
        if frame["messages"][0]["name"] != name.as_str() {
            bail!("witness expected {name}, got {frame}");
        }
        Ok(())
    }
}
