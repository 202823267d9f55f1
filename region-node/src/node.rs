//! The state one region node shares between its WebSocket connections, its REST
//! handlers and its background tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use crate::apps::AppRegistry;
use crate::auth::nonce_claims::RegionNonces;
use crate::auth::{client_target, revoked};
use crate::config::Config;
use crate::connection_key::KeySigner;
use crate::control::ControlPlane;
use crate::error::AblyError;
use crate::mesh::Mesh;
use crate::outbox::Outbox;
use crate::protocol::ErrorInfo;
use crate::region::Region;

pub struct Node {
    pub config: Config,
    pub apps: Arc<AppRegistry>,
    /// The global master, embedded or external: where apps are created and deleted.
    pub control: Arc<ControlPlane>,
    /// The region task: channel masters, ChannelClients and copies.
    pub region: Region,
    /// The region mesh, when this node has peers.
    pub mesh: Option<Mesh>,
    pub connections: Arc<Connections>,
    pub keys: KeySigner,
    pub admin_token: String,
    /// TokenRequest nonces, accepted once per region.
    pub nonces: Arc<RegionNonces>,
}

/// Live connections of this node, by connection id. The registry holds only each
/// connection's outbox: a connection's state is owned by its task.
#[derive(Default)]
pub struct Connections {
    live: RwLock<HashMap<Arc<str>, Arc<Outbox>>>,
    /// The token each token-authenticated connection holds now (it changes on
    /// in-band AUTH), so a revocation finds the connections it covers. Lock order:
    /// `tokens` before `live`.
    tokens: RwLock<HashMap<Arc<str>, TokenHolder>>,
    /// WebSockets this node serves now, from the upgrade on (authenticated or not):
    /// what `limits.max_connections` bounds. Each is released by its [`SocketSlot`].
    sockets: AtomicUsize,
}

/// One admitted WebSocket's share of the node's connection limit; dropping it (the
/// socket's task ending, however it ends) frees the slot.
pub struct SocketSlot {
    connections: Arc<Connections>,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.connections.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a revocation matches a connection's token by.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenHolder {
    pub key_name: String,
    pub client_id: Option<String>,
    pub issued_ms: i64,
}

impl Connections {
    /// Admits one more WebSocket if fewer than `limit` are served now.
    pub fn admit(self: &Arc<Self>, limit: usize) -> Option<SocketSlot> {
        let below = |n: usize| (n < limit).then_some(n + 1);
        (self
            .sockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, below))
        .ok()?;
        Some(SocketSlot {
            connections: self.clone(),
        })
    }

    pub fn insert(&self, outbox: Arc<Outbox>) {
        self.live
            .write()
            .insert(outbox.connection_id.clone(), outbox);
    }

    /// Ends this node's transport of `connection_id`, if it still has one, because the
    /// client continues the connection on a new transport; returns once it is gone
    /// (bounded), so its clean-up cannot undo the new transport's attachments.
    pub async fn supersede(&self, connection_id: &str) {
        let old = self.live.read().get(connection_id).cloned();
        let Some(old) = old else {
            return;
        };
        old.disconnect(AblyError::Superseded.to_info());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.live.read().contains_key(connection_id) {
            if tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub fn remove(&self, connection_id: &str) {
        self.tokens.write().remove(connection_id);
        self.live.write().remove(connection_id);
    }

    /// Records the token a connection holds now; `None` for a key.
    pub fn hold_token(&self, connection_id: &Arc<str>, holder: Option<TokenHolder>) {
        let mut tokens = self.tokens.write();
        match holder {
            Some(holder) => tokens.insert(connection_id.clone(), holder),
            None => tokens.remove(connection_id),
        };
    }

    /// Disconnects every connection holding a token of `key_name` for `target` issued
    /// before `issued_before_ms`, returning how many there were.
    pub fn revoke(
        &self,
        key_name: &str,
        target: &str,
        issued_before_ms: u64,
        error: &ErrorInfo,
    ) -> usize {
        let tokens = self.tokens.read();
        let live = self.live.read();
        let covered = tokens.iter().filter(|(_, holder)| {
            holder.key_name == key_name
                && holder
                    .client_id
                    .as_deref()
                    .is_some_and(|id| client_target(id) == target)
                && revoked(holder.issued_ms, issued_before_ms)
        });
        let mut count = 0;
        for (connection_id, _) in covered {
            if let Some(outbox) = live.get(connection_id) {
                outbox.disconnect(error.clone());
                count += 1;
            }
        }
        count
    }

    pub fn len(&self) -> usize {
        self.live.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fails every connection of an app, returning how many there were.
    pub fn fail_app(&self, app_id: &str, error: &ErrorInfo) -> usize {
        let live = self.live.read();
        let doomed: Vec<_> = live.values().filter(|o| &*o.app_id == app_id).collect();
        for outbox in &doomed {
            outbox.fail(error.clone());
        }
        doomed.len()
    }
}

impl Connections {
    /// Sends every connection away with DISCONNECTED, returning how many there were.
    pub fn disconnect_all(&self, error: &ErrorInfo) -> usize {
        let live = self.live.read();
        for outbox in live.values() {
            outbox.disconnect(error.clone());
        }
        live.len()
    }
}

/// Milliseconds since the Unix epoch, the protocol's timestamp unit.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_beyond_the_limit_are_refused_until_a_slot_is_freed() {
        let connections = Arc::new(Connections::default());
        let first = connections.admit(2).expect("first");
        let _second = connections.admit(2).expect("second");
        assert!(connections.admit(2).is_none());

        drop(first);
        assert!(connections.admit(2).is_some());
    }
}
