//! Starling's gRPC contracts, shared by the global master, the region nodes and the
//! operator commands, so every side compiles against the same generated types.
//!
//! - [`global`]: the global master's `Raft` service (member to member) and its `Control`
//!   service (writes, reads, the watch stream and status).
//! - [`bridge`]: the `Bridge` service, one bidirectional stream per pair of regions.
//! - [`tls`]: mutual-TLS configurations under the cluster CA for both.
//!
//! Payloads that belong to another crate's types (openraft's RPCs, state machine
//! commands, Ably messages) travel as opaque bytes that the caller encodes, which keeps
//! this crate free of those dependencies.

pub mod tls;

/// `starling.global.v1`: generated from `proto/global_master.proto`.
pub mod global {
    tonic::include_proto!("starling.global.v1");
}

/// `starling.bridge.v1`: generated from `proto/bridge.proto`.
pub mod bridge {
    tonic::include_proto!("starling.bridge.v1");
}
