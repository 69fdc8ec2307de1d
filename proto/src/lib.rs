//! The `lockstep.v1` wire protocol, generated from `proto/lockstep/v1` at
//! build time. Only generated code, the reflection descriptor and the
//! byte layout of the fixed-width columns (`columns`) live here;
//! conversions to domain types belong to the crates that own those types.

/// Generated code: not held to this project's lints.
#[allow(clippy::all)]
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
/// 5: `ReplayedSteps` columns in fixed-width bytes (`columns`), and
/// `journaled_as_replayed` instead of a second copy of equal checksums.
/// 6: `CommittedTids`, the `Committed` reports of several replayed tids
/// under one seq.
/// 7: `ReplayedTids` instead of `ReplayedSteps`: the replayed steps and
/// Prepared reports of several tids under one seq and one endpoint table,
/// each Prepared's aggregate in cells over that table; `Hello.data_id`.
pub const PROTOCOL_VERSION: u32 = 7;

/// The fixed-width columns of `ReplayedTid` (protocol version 5, then 7): little-
/// endian u64s, 8 bytes per step number and 16 per cell (count, then hash).
/// One definition for the host that writes them and the coordinator that
/// reads them.
pub mod columns {
    /// Bytes of one step number.
    pub const STEP_BYTES: usize = 8;
    /// Bytes of one cell: a count and a hash.
    pub const CELL_BYTES: usize = 16;

    /// Appends a step number.
    pub fn push_step(column: &mut Vec<u8>, step: u64) {
        column.extend_from_slice(&step.to_le_bytes());
    }

    /// Appends a cell.
    pub fn push_cell(column: &mut Vec<u8>, count: u64, hash: u64) {
        column.extend_from_slice(&count.to_le_bytes());
        column.extend_from_slice(&hash.to_le_bytes());
    }

    /// The step numbers of a column, or `None` when its length is not a
    /// whole number of them.
    pub fn steps(column: &[u8]) -> Option<impl ExactSizeIterator<Item = u64> + '_> {
        column.len().is_multiple_of(STEP_BYTES).then(|| column.chunks_exact(STEP_BYTES).map(le))
    }

    /// The (count, hash) cells of a column, or `None` when its length is
    /// not a whole number of them.
    pub fn cells(column: &[u8]) -> Option<impl ExactSizeIterator<Item = (u64, u64)> + '_> {
        column.len().is_multiple_of(CELL_BYTES).then(|| column.chunks_exact(CELL_BYTES).map(|c| (le(&c[..8]), le(&c[8..]))))
    }

    fn le(bytes: &[u8]) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        u64::from_le_bytes(word)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn columns_read_back_what_was_written_and_refuse_a_partial_entry() {
            let (mut steps_col, mut cells_col) = (Vec::new(), Vec::new());
            push_step(&mut steps_col, 7);
            push_step(&mut steps_col, u64::MAX);
            push_cell(&mut cells_col, 3, 0xdead_beef_0000_0001);
            assert_eq!(steps(&steps_col).unwrap().collect::<Vec<_>>(), [7, u64::MAX]);
            assert_eq!(cells(&cells_col).unwrap().collect::<Vec<_>>(), [(3, 0xdead_beef_0000_0001)]);
            assert!(steps(&steps_col[..9]).is_none());
            assert!(cells(&cells_col[..8]).is_none());
            assert_eq!(cells(&[]).unwrap().len(), 0);
        }
    }
}

/// gRPC metadata key under which a coordinator that is not the leader names
/// the leader's address (`host:port`, no scheme) when it answers UNAVAILABLE.
pub const LEADER_METADATA_KEY: &str = "lockstep-leader";

/// gRPC metadata key (value `true`) on an Admin read a follower answered
/// from its copy of the ledger, which may lag the leader's: on the answer,
/// and on a refusal (a tid it does not hold yet).
pub const STALE_METADATA_KEY: &str = "lockstep-stale";
