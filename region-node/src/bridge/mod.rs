//! Region bridges: tonic bidirectional streams between regions (`proto/bridge.proto`).
//!
//! Which nodes hold the links: every node that relays a channel homed in another region
//! dials that region itself, one stream per remote region, multiplexing every channel
//! it relays from there ([`Dialer`]). The region it dials accepts on any of its nodes
//! ([`serve`]), which attaches to the channel through its own ChannelClient like a
//! connection would, and publishes through it. So when a relaying node dies, the ring
//! makes another node relay, and that node opens its own link within the failure
//! detection time; when an accepting node dies, the dialer reconnects to another
//! address the remote region registered.
//!
//! The dialer side is the one that holds interest and forwards publishes; the accepting
//! side answers with what its region sequences. A node accepts only channels homed in
//! its own region, so nothing relayed is relayed again (split horizon).

mod frames;
mod serve;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use starling_proto::bridge::bridge_client::BridgeClient;
use starling_proto::bridge::{bridge_frame::Body, Hello};
use starling_proto::tls::{client_tls, TlsFiles, SERVER_NAME};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::control::ControlPlane;
use crate::region::{BridgeIn, BridgeOut};

pub use serve::serve;

/// Decodes bytes as a bridge frame and everything it carries, as both sides of a link
/// do, discarding the outcome: for property tests of hostile input.
#[cfg(test)]
pub fn decode_untrusted(bytes: &[u8]) {
    use prost::Message as _;
    let Ok(frame) = starling_proto::bridge::BridgeFrame::decode(bytes) else {
        return;
    };
    if let Some(starling_proto::bridge::bridge_frame::Body::Forward(forward)) = &frame.body {
        let _ = serve::forwarded_publish(forward, "peer", 1, 65_536);
    }
    let mut numbering = frames::Numbering::new("test");
    for seq in 0..4 {
        numbering.remember(seq, seq);
    }
    let _ = frames::incoming(frame, &mut numbering);
}

/// Bumped on incompatible changes of what the frames mean.
const PROTOCOL_VERSION: u32 = 1;
/// Largest bridge frame: a whole publish of the largest allowed size fits easily.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const KEEPALIVE: Duration = Duration::from_secs(2);

/// What the dialer needs to reach other regions.
#[derive(Clone)]
pub struct DialSettings {
    pub node_id: String,
    pub region: String,
    pub tls: TlsFiles,
    pub retry: Duration,
}

/// This node's links to other regions, opened on first use.
pub struct Dialer {
    settings: DialSettings,
    control: Arc<ControlPlane>,
    /// Where each link task reports to the region task.
    events: mpsc::UnboundedSender<BridgeIn>,
    links: HashMap<String, mpsc::UnboundedSender<BridgeOut>>,
}

impl Dialer {
    pub fn new(
        settings: DialSettings,
        control: Arc<ControlPlane>,
        events: mpsc::UnboundedSender<BridgeIn>,
    ) -> Self {
        Self {
            settings,
            control,
            events,
            links: HashMap::new(),
        }
    }

    /// Queues `out` on the link to its region, opening the link if there is none.
    /// While the link is down what is queued is dropped: relays send everything again
    /// when they hear the link is up.
    pub fn send(&mut self, out: BridgeOut) {
        let region = match &out {
            BridgeOut::Interest { region, .. }
            | BridgeOut::Forward { region, .. }
            | BridgeOut::History { region, .. }
            | BridgeOut::Handoff { region, .. } => region.clone(),
        };
        let tx = self.links.entry(region.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let link = Link {
                region,
                settings: self.settings.clone(),
                control: self.control.clone(),
                events: self.events.clone(),
            };
            tokio::spawn(link.run(rx));
            tx
        });
        let _ = tx.send(out);
    }
}

/// One link to one remote region, redialled whenever it breaks.
struct Link {
    region: String,
    settings: DialSettings,
    control: Arc<ControlPlane>,
    events: mpsc::UnboundedSender<BridgeIn>,
}

impl Link {
    async fn run(self, mut queue: mpsc::UnboundedReceiver<BridgeOut>) {
        let mut attempt = 0usize;
        loop {
            let addrs = self.control.bridges_of(&self.region);
            if addrs.is_empty() {
                debug!(region.id = %self.region, "region has registered no bridge address yet");
            }
            for addr in addrs
                .iter()
                .cycle()
                .skip(attempt % addrs.len().max(1))
                .take(addrs.len())
            {
                attempt += 1;
                match self.connect(addr).await {
                    Ok(client) => {
                        if self.carry(client, &mut queue, addr).await.is_err() {
                            return;
                        }
                        crate::observe::bridge_link(&self.region, false);
                        let _ = self.events.send(BridgeIn::Down {
                            region: self.region.clone(),
                        });
                    }
                    Err(error) => {
                        debug!(region.id = %self.region, bridge.addr = %addr, "cannot dial: {error}")
                    }
                }
            }
            // What was queued meanwhile is sent again by the relays once the link is up.
            while queue.try_recv().is_ok() {}
            tokio::time::sleep(self.settings.retry).await;
        }
    }

    async fn connect(&self, addr: &str) -> anyhow::Result<BridgeClient<tonic::transport::Channel>> {
        let tls = client_tls(&self.settings.tls, SERVER_NAME)?;
        let channel = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE * 2)
            .keep_alive_while_idle(true)
            .connect()
            .await?;
        Ok(BridgeClient::new(channel)
            .max_decoding_message_size(MAX_FRAME_BYTES)
            .max_encoding_message_size(MAX_FRAME_BYTES))
    }

    /// Opens the stream and carries frames both ways until it ends. `Err` means the
    /// region task is gone and the link should stop.
    async fn carry(
        &self,
        mut client: BridgeClient<tonic::transport::Channel>,
        queue: &mut mpsc::UnboundedReceiver<BridgeOut>,
        addr: &str,
    ) -> Result<(), ()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut numbering = frames::Numbering::new(&self.settings.region);
        let _ = tx.send(numbering.frame(Body::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: self.settings.node_id.clone(),
            registry_version: 0,
        })));
        let response = client.link(UnboundedReceiverStream::new(rx)).await;
        let mut inbound = match response {
            Ok(response) => response.into_inner(),
            Err(status) => {
                debug!(region.id = %self.region, "bridge refused: {}", status.message());
                return Ok(());
            }
        };

        // Frames queued before this stream existed went nowhere; relays resend on Up.
        while queue.try_recv().is_ok() {}
        info!(region.id = %self.region, bridge.addr = %addr, "bridge link open");
        crate::observe::bridge_link(&self.region, true);
        let up = BridgeIn::Up {
            region: self.region.clone(),
        };
        self.events.send(up).map_err(|_| ())?;

        loop {
            tokio::select! {
                out = queue.recv() => {
                    let Some(out) = out else { return Err(()) };
                    let (body, answered_by) = frames::outgoing(out);
                    let frame = numbering.frame(body);
                    if let Some(req) = answered_by {
                        numbering.remember(frame.origin_seq, req);
                    }
                    if tx.send(frame).is_err() {
                        return Ok(());
                    }
                }
                frame = inbound.message() => {
                    match frame {
                        Ok(Some(frame)) => {
                            for event in frames::incoming(frame, &mut numbering) {
                                self.events.send(event).map_err(|_| ())?;
                            }
                        }
                        Ok(None) => return Ok(()),
                        Err(status) => {
                            warn!(region.id = %self.region, "bridge link ended: {}", status.message());
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}
