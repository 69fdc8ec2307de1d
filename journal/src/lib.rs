//! The step journal of one Lockstep host (DESIGN section 6).
//!
//! API CONTRACT (bodies are being filled in; signatures are what other
//! crates code against — change them only together with their callers).
//!
//! A journal is a directory of segment files. Each host appends one record
//! per engine step (before running the step), a commit marker per committed
//! tid and a checkpoint record per checkpoint; after a crash it reads them
//! back tid by tid to replay.

pub mod checksum;

/// Generated record bodies (`proto/lockstep/journal/v1/journal.proto`).
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/lockstep.journal.v1.rs"));
}

pub use checksum::{record_hash, Aggregate, Checksum, Difference, EndpointChecksums};

use std::future::Future;
use std::path::{Path, PathBuf};

/// Who owns a journal: written into every segment header and checked on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalIdent {
    pub cluster_id: String,
    pub host_id: String,
}

#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// A new segment is started once the current one reaches this size.
    pub segment_bytes_max: u64,
    /// Largest encoded record accepted by `append`.
    pub record_bytes_max: u32,
    /// At most this many records share one fdatasync.
    pub group_commit_records_max: usize,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions { segment_bytes_max: 64 << 20, record_bytes_max: 16 << 20, group_commit_records_max: 1024 }
    }
}

/// A durable record's place in the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Segment sequence number (segments are numbered 1, 2, 3, ...).
    pub segment: u64,
    /// Byte offset of the record's frame within that segment.
    pub offset: u64,
}

/// What `Journal::open` found and repaired.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    pub segments: usize,
    pub records: u64,
    /// Bytes cut from a torn tail of the last segment (0 if none).
    pub torn_tail_bytes: u64,
    /// The last step number journaled (0 = none).
    pub last_step: u64,
}

/// Per-tid view of the journal, computed without keeping payloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TidSummary {
    pub tid: u64,
    pub first_step: u64,
    pub last_step: u64,
    pub steps: u64,
    pub aggregate: Aggregate,
    /// A commit marker for this tid is in the journal.
    pub committed: bool,
}

/// Journal summary for a host's Hello.
#[derive(Clone, Debug, Default)]
pub struct JournalSummary {
    /// Tids that have step records or commit markers, ascending.
    pub tids: Vec<TidSummary>,
    /// Checkpoint records found (tid, location), ascending by tid.
    pub checkpoints: Vec<(u64, String)>,
    pub last_step: u64,
}

/// Errors are typed and name the file, offset and expected-vs-found.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error on {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = JournalError> = std::result::Result<T, E>;

/// Handle to an open journal. `Send + Sync`; share it behind an `Arc`.
pub struct Journal {
    _private: (),
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, validating every
    /// segment and truncating a torn tail of the last one.
    pub fn open(dir: impl AsRef<Path>, ident: JournalIdent, opts: JournalOptions) -> Result<(Journal, OpenReport)> {
        let _ = (dir, ident, opts);
        todo!()
    }

    /// Appends one record and returns once it is durable (group commit).
    pub fn append(&self, record: &pb::JournalRecord) -> Result<Position> {
        let _ = record;
        todo!()
    }

    /// Async form of `append` for tokio callers; does not block the caller's
    /// thread. Resolves once the record is durable.
    pub fn append_async(&self, record: pb::JournalRecord) -> impl Future<Output = Result<Position>> + Send + 'static {
        let _ = record;
        async { todo!() }
    }

    /// Streams every record from `from` (inclusive) to the durable end.
    pub fn read_from(&self, from: Position) -> Result<impl Iterator<Item = Result<(Position, pb::JournalRecord)>>> {
        let _ = from;
        Ok(std::iter::empty())
    }

    /// Per-tid summary of every tid strictly after `after_tid`, plus all
    /// checkpoint records. Streams the journal; memory does not grow with it.
    pub fn summarize(&self, after_tid: u64) -> Result<JournalSummary> {
        let _ = after_tid;
        todo!()
    }

    /// The step records of one tid, in step order, streamed.
    pub fn steps_of(&self, tid: u64) -> Result<impl Iterator<Item = Result<pb::StepRecord>>> {
        let _ = tid;
        Ok(std::iter::empty())
    }

    /// Deletes whole segments whose every record lies before the checkpoint
    /// record of `checkpoint_tid`. Crash-safe: the journal stays readable.
    pub fn gc_before_checkpoint(&self, checkpoint_tid: u64) -> Result<usize> {
        let _ = checkpoint_tid;
        todo!()
    }

    /// The last step number journaled (0 = none).
    pub fn last_step(&self) -> u64 {
        todo!()
    }
}
