//! The `lockstep.v1` wire protocol, generated from `proto/lockstep/v1` at
//! build time. Only generated code and the reflection descriptor live here;
//! conversions to domain types belong to the crates that own those types.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("lockstep.v1");
}

/// Encoded `FileDescriptorSet` of every lockstep.v1 file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lockstep_v1_descriptor.bin"));

/// The wire protocol version this build speaks (`Hello.protocol_version`).
/// 2: `Prepare.next` (the commit pipeline).
/// 3: `ReplayedSteps` in columns; `Hello.journal` aggregates in columns
/// over `Hello.journal_endpoints`.
/// 4: inside a replay window, `Commit{T}` may carry the next sealed
/// `Start` (one command per replayed tid instead of two).
pub const PROTOCOL_VERSION: u32 = 4;

/// gRPC metadata key under which a coordinator that is not the leader names
/// the leader's address (`host:port`, no scheme) when it answers UNAVAILABLE.
pub const LEADER_METADATA_KEY: &str = "lockstep-leader";
