//! A TokenRequest nonce is accepted once per region: the node that receives a signed
//! request claims `keyName:nonce` at the node the ring names for that string, over
//! the mesh, and that owner answers whether it is the first claim.
//!
//! The owner remembers the claim in its [`NonceCache`] and copies it to the next node
//! along the ring before it answers, so a SIGKILL of the owner does not reopen a
//! replay: the ring then names that next node, which holds the copy. The copy holder's
//! answer counts too, so an owner that restarted with an empty memory still refuses a
//! nonce its copy holder remembers.
//!
//! An owner that does not answer within [`CLAIM_TIMEOUT`] (dead, and the mesh has not
//! noticed yet) is passed over for that next node. Without a mesh (a region of one)
//! the node's own memory is the region's. When neither can be asked (no links, or a
//! view in flux), the node falls back to its own memory, logs a warning and counts
//! it (`starling_nonce_claims_local_total`): the request is served, and only a
//! replay at another node during that fault can slip through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::nonce::NonceCache;
use crate::mesh::Mesh;
use crate::node::now_ms;
use crate::ring::{Ring, DEFAULT_VNODES};

/// How long a node waits for the owner's (or the copy holder's) answer.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);

/// What nodes say to each other about nonces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NonceMsg {
    /// Receiving node → owner (or, with `copy`, owner → copy holder): remember this
    /// nonce until `forget_at_ms`; was it new?
    Claim {
        req: u64,
        claim: NonceClaim,
        copy: bool,
    },
    /// The answer: whether no earlier claim of the nonce was remembered.
    Claimed { req: u64, first: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NonceClaim {
    pub key_name: String,
    pub nonce: String,
    /// When the request's timestamp can no longer pass the window.
    pub forget_at_ms: i64,
}

impl NonceClaim {
    /// Where on the ring the claim lives.
    fn ring_key(&self) -> String {
        format!("{}:{}", self.key_name, self.nonce)
    }
}

/// The region's memory of accepted nonces, as this node takes part in it.
pub struct RegionNonces {
    local: NonceCache,
    mesh: Option<Mesh>,
    /// The ring over the live nodes, rebuilt when the mesh view changes.
    ring: Mutex<(u64, Ring)>,
    pending: Mutex<HashMap<u64, oneshot::Sender<bool>>>,
    next_req: AtomicU64,
}

impl RegionNonces {
    /// A region of one: the node's memory is the region's.
    pub fn alone() -> Arc<Self> {
        Self::new(None)
    }

    /// Takes part in the region's memory over `mesh`; `inbound` carries the nonce
    /// messages peers send.
    pub fn start(mesh: Mesh, inbound: mpsc::UnboundedReceiver<(String, NonceMsg)>) -> Arc<Self> {
        let nonces = Self::new(Some(mesh));
        tokio::spawn(serve(nonces.clone(), inbound));
        nonces
    }

    fn new(mesh: Option<Mesh>) -> Arc<Self> {
        Arc::new(Self {
            local: NonceCache::default(),
            mesh,
            ring: Mutex::new((u64::MAX, Ring::new(DEFAULT_VNODES))),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
        })
    }

    /// Records the claim for the region: false when some node of the region already
    /// accepted this nonce for this key.
    ///
    /// The owner is asked first; an owner that does not answer (it may have died,
    /// and the mesh not noticed yet) is passed over for the next node, which holds
    /// its copies and becomes the owner once the death is noticed.
    pub async fn first_use(&self, claim: NonceClaim) -> bool {
        let Some(mesh) = &self.mesh else {
            return self.remember(&claim);
        };
        let me = mesh.me().id;
        let owners = self.owners(&claim, 2);
        for owner in &owners {
            if *owner == me {
                return self.claim_as_owner(&claim, &me).await;
            }
            if let Some(first) = self.ask(owner, &claim, false).await {
                return first;
            }
        }
        self.fall_back(&claim, &owners)
    }

    /// The owner's part: remember the claim, and have the next node along the ring
    /// copy it before answering. A copy holder that cannot be asked leaves the claim
    /// on this node alone.
    async fn claim_as_owner(&self, claim: &NonceClaim, me: &str) -> bool {
        let first_here = self.remember(claim);
        debug!(
            key.name = %claim.key_name,
            nonce = %claim.nonce,
            first = first_here,
            "nonce claimed at its owner"
        );
        let Some(copy_holder) = self.copy_holder(claim, me) else {
            return first_here;
        };
        match self.ask(&copy_holder, claim, true).await {
            Some(first_there) => first_here && first_there,
            None => {
                debug!(peer.id = %copy_holder, "nonce copy holder did not answer");
                first_here
            }
        }
    }

    /// The node after this one along the ring for the claim (after the owner, when
    /// this node stands in for an owner that did not answer).
    fn copy_holder(&self, claim: &NonceClaim, me: &str) -> Option<String> {
        let owners = self.owners(claim, 3);
        let after_me = owners.iter().skip_while(|n| *n != me).nth(1);
        after_me
            .or_else(|| owners.iter().find(|n| *n != me))
            .cloned()
    }

    fn remember(&self, claim: &NonceClaim) -> bool {
        self.local
            .first_use(&claim.key_name, &claim.nonce, now_ms(), claim.forget_at_ms)
    }

    fn fall_back(&self, claim: &NonceClaim, owners: &[String]) -> bool {
        warn!(
            owners = ?owners,
            key.name = %claim.key_name,
            "no owner of the nonce answered; checked against this node's memory only"
        );
        metrics::counter!("starling_nonce_claims_local_total").increment(1);
        self.remember(claim)
    }

    /// Sends a claim to `peer` and waits for its answer; None when there is no link
    /// or no answer in time.
    async fn ask(&self, peer: &str, claim: &NonceClaim, copy: bool) -> Option<bool> {
        let mesh = self.mesh.as_ref()?;
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(req, tx);

        let msg = NonceMsg::Claim {
            req,
            claim: claim.clone(),
            copy,
        };
        let answer = if mesh.send_nonce(peer, msg) {
            tokio::time::timeout(CLAIM_TIMEOUT, rx).await.ok()?.ok()
        } else {
            None
        };
        self.pending.lock().remove(&req);
        answer
    }

    /// Up to `count` distinct live nodes for the claim, its owner first.
    fn owners(&self, claim: &NonceClaim, count: usize) -> Vec<String> {
        let Some(mesh) = &self.mesh else {
            return Vec::new();
        };
        let view = mesh.view();
        let mut ring = self.ring.lock();
        if ring.0 != view.version {
            *ring = (
                view.version,
                Ring::with_nodes(view.live.keys(), DEFAULT_VNODES),
            );
        }
        ring.1.owners(&claim.ring_key(), count)
    }

    /// A peer's message: a claim to answer (as owner or copy holder), or an answer.
    fn on_message(self: &Arc<Self>, peer: String, msg: NonceMsg) {
        match msg {
            NonceMsg::Claimed { req, first } => {
                if let Some(tx) = self.pending.lock().remove(&req) {
                    let _ = tx.send(first);
                }
            }
            NonceMsg::Claim {
                req, claim, copy, ..
            } if copy => {
                let first = self.remember(&claim);
                self.answer(&peer, req, first);
            }
            NonceMsg::Claim { req, claim, .. } => {
                // The owner waits for its copy holder, so it answers from a task of
                // its own rather than holding up other claims.
                let nonces = self.clone();
                tokio::spawn(async move {
                    let Some(me) = nonces.mesh.as_ref().map(|m| m.me().id) else {
                        return;
                    };
                    let first = nonces.claim_as_owner(&claim, &me).await;
                    nonces.answer(&peer, req, first);
                });
            }
        }
    }

    fn answer(&self, peer: &str, req: u64, first: bool) {
        if let Some(mesh) = &self.mesh {
            mesh.send_nonce(peer, NonceMsg::Claimed { req, first });
        }
    }
}

async fn serve(
    nonces: Arc<RegionNonces>,
    mut inbound: mpsc::UnboundedReceiver<(String, NonceMsg)>,
) {
    while let Some((peer, msg)) = inbound.recv().await {
        nonces.on_message(peer, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(nonce: &str) -> NonceClaim {
        NonceClaim {
            key_name: "app.key".into(),
            nonce: nonce.into(),
            forget_at_ms: now_ms() + 60_000,
        }
    }

    #[tokio::test]
    async fn alone_a_nonce_is_accepted_once() {
        let nonces = RegionNonces::alone();
        assert!(nonces.first_use(claim("n1")).await);
        assert!(!nonces.first_use(claim("n1")).await);
        assert!(nonces.first_use(claim("n2")).await);
    }

    #[test]
    fn claims_of_one_nonce_share_a_ring_key_per_key_name() {
        let mut other = claim("n1");
        other.key_name = "app.other".into();
        assert_ne!(claim("n1").ring_key(), other.ring_key());
        assert_eq!(claim("n1").ring_key(), claim("n1").ring_key());
    }
}
