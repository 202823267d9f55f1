//! Starling's global master: the raft-replicated control plane that holds the regions
//! and their bridge addresses, every channel's home region, placement rules, apps and
//! their keys, and token revocations.
//!
//! - [`state`]: the replicated state machine as a plain, deterministic value (no I/O).
//! - [`store`]: openraft's log store and state machine over it, persisted with redb.
//!
//! The raft network, the gRPC API and the `global-master` binary build on these.

pub mod state;
pub mod store;
