//! The Lockstep coordinator: assigns global transaction ids, drives every
//! transaction on every host, replays after failures and fails loudly on
//! any mismatch.
//!
//! - `core`: the sans-IO pipeline and transaction state machine.
//! - `ledger`: the replicated record of every transaction (pure data).
//! - `raft`: the openraft group whose state machine is the ledger.
//! - `wire`: conversions between `lockstep.v1` messages and core types.
//! - `service`: the async shell: gRPC services and the core driver.
//! - `deadline`: the driver's sub-millisecond timer for commit deadlines.
//! - `metrics`: the Prometheus metrics served with `--metrics-listen`.

pub mod core;
pub mod ledger;
pub mod raft;
pub mod wire;
pub mod service;
pub mod deadline;
pub mod metrics;
