//! The journal's error type. Owns every way the journal can fail and the
//! wording an operator sees: each file-related variant names the file, the
//! byte offset, what was expected vs found, and what to do about it.
//!
//! Errors about a file's contents are operating errors (typed, never a
//! panic); a broken invariant of this crate's own is a bug and asserts.

use std::path::PathBuf;

use crate::JournalIdent;

/// Errors are typed and name the file, offset and expected-vs-found.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Other(String),

    /// The file does not start with the journal magic.
    #[error(
        "{path}: offset 0: not a Lockstep journal segment: expected magic {expected:02x?}, found {found:02x?}; \
         hint: the journal directory must contain only files written by Lockstep"
    )]
    BadMagic { path: PathBuf, expected: [u8; 8], found: Vec<u8> },

    /// The segment was written in a format version this build cannot read.
    #[error(
        "{path}: offset 8: unsupported journal format version {found}, this build reads versions {supported:?}; \
         hint: run a Lockstep build that supports format {found} (the journal was written by a newer build, or the header is corrupt)"
    )]
    UnsupportedVersion { path: PathBuf, found: u32, supported: &'static [u32] },

    /// The segment header is malformed (bad length, bad CRC, bad text).
    #[error(
        "{path}: offset {offset}: corrupt segment header: expected {expected}, found {found}; \
         hint: the segment file is damaged; restore the host's data volume or rebuild this host from a checkpoint"
    )]
    BadHeader { path: PathBuf, offset: u64, expected: String, found: String },

    /// The segment belongs to another cluster or host.
    #[error(
        "{path}: offset 0: journal belongs to host {found_host:?} of cluster {found_cluster:?}, \
         expected host {expected_host:?} of cluster {expected_cluster:?}; \
         hint: this directory belongs to host {found_host:?} of cluster {found_cluster:?}; point --data-dir at the right volume"
    )]
    ForeignJournal {
        path: PathBuf,
        expected_cluster: String,
        expected_host: String,
        found_cluster: String,
        found_host: String,
    },

    /// The sequence number in the header differs from the file name.
    #[error(
        "{path}: offset 16: segment header names segment {found}, expected {expected} (from the file name); \
         hint: segment files were renamed or copied by hand; restore the original names"
    )]
    SegmentNumberMismatch { path: PathBuf, expected: u64, found: u64 },

    /// A segment file is missing from the sequence.
    #[error(
        "{dir}: journal segment {expected} is missing (next segment found: {found}); \
         hint: segments were deleted or not restored; restore the missing file or rebuild this host from a checkpoint"
    )]
    MissingSegment { dir: PathBuf, expected: u64, found: u64 },

    /// Another process (or another `Journal` in this one) holds the
    /// journal directory's lock: two writers would corrupt it.
    #[error(
        "{path}: the journal is in use{holder}; two host agents cannot share one data directory; hint: stop the \
         other process, or give this one its own --data-dir"
    )]
    Locked { path: PathBuf, holder: String },

    /// A file in the journal directory has a `.seg` name that is not a
    /// sequence number.
    #[error("{path}: unexpected file name in journal directory: expected NNNNNNNNNNNNNNNNNNNN.seg (20 digits); hint: move the file out of the journal directory")]
    BadSegmentName { path: PathBuf },

    /// A record's CRC does not match (not at the torn tail).
    #[error(
        "{path}: offset {offset}: record CRC32C mismatch: stored {expected:#010x}, computed {found:#010x}{where_}; \
         hint: the journal is corrupt; restore the data volume or rebuild this host from a checkpoint"
    )]
    BadCrc { path: PathBuf, offset: u64, expected: u32, found: u32, where_: &'static str },

    /// A record's length prefix is zero or larger than allowed.
    #[error(
        "{path}: offset {offset}: bad record length {found} bytes, expected 1..={limit} bytes and at most the {available} bytes left in the file{where_}; \
         hint: the journal is corrupt; restore the data volume or rebuild this host from a checkpoint"
    )]
    BadLength { path: PathBuf, offset: u64, found: u64, limit: u64, available: u64, where_: &'static str },

    /// A record is cut short where no torn tail is allowed.
    #[error(
        "{path}: offset {offset}: truncated record: expected {expected} bytes, found {found}{where_}; \
         hint: the segment was cut short; restore the data volume or rebuild this host from a checkpoint"
    )]
    Truncated { path: PathBuf, offset: u64, expected: u64, found: u64, where_: &'static str },

    /// CRC is valid but the body is not a journal record this build reads.
    #[error(
        "{path}: offset {offset}: record has a valid CRC but does not decode: {reason}; \
         hint: written by an incompatible build? check the Lockstep version that wrote this journal"
    )]
    Undecodable { path: PathBuf, offset: u64, reason: String },

    /// A step record does not follow the previous step record.
    #[error(
        "{path}: offset {offset}: gap in the step chain: step {step} names previous step {found}, expected {expected} \
         (the step record before it); hint: step records are missing or reordered; the journal cannot be replayed, rebuild this host from a checkpoint"
    )]
    StepGap { path: PathBuf, offset: u64, step: u64, expected: u64, found: u64 },

    /// A step record's step number does not exceed its previous step, or its
    /// tid goes backwards.
    #[error(
        "{path}: offset {offset}: step record out of order: {what}: expected {expected}, found {found}; \
         hint: the journal is corrupt or was written by a faulty host agent; rebuild this host from a checkpoint"
    )]
    StepOrder { path: PathBuf, offset: u64, what: &'static str, expected: String, found: String },

    /// `append` was given a step record that does not extend the chain.
    #[error(
        "append rejected: step {step} names previous step {found}, but the last journaled step is {expected}; \
         hint: a bug in the caller; steps must be appended in order, each naming the one before"
    )]
    AppendOutOfOrder { step: u64, expected: u64, found: u64 },

    /// `append` was given a step record whose step or tid goes backwards.
    #[error("append rejected: {what}: expected {expected}, found {found}; hint: a bug in the caller")]
    AppendInvalid { what: &'static str, expected: String, found: String },

    /// The encoded record exceeds `record_bytes_max`.
    #[error("append rejected: record is {bytes} bytes, record_bytes_max is {record_bytes_max}; hint: split the step's input or raise record_bytes_max")]
    RecordTooLarge { bytes: u64, record_bytes_max: u32 },

    /// A failed write or fsync earlier made the journal refuse appends.
    #[error(
        "journal is poisoned and refuses appends: {reason}; \
         hint: whether the failed records reached the disk is unknown; restart the host agent so it reopens and recovers the journal"
    )]
    Poisoned { reason: String },

    /// The writer thread is gone (the journal is closing or it crashed).
    #[error("journal writer thread is gone; hint: the journal was closed or its writer crashed, see earlier log lines")]
    WriterGone,

    /// `gc_before_checkpoint` found no checkpoint record of that tid.
    #[error("no checkpoint record of tid {tid} in the journal; hint: journal the checkpoint record before collecting segments")]
    CheckpointNotFound { tid: u64 },

    /// `read_from` was asked for a position that is not in the journal.
    #[error("position (segment {segment}, offset {offset}) is outside the journal (segments {first}..={last}); hint: a bug in the caller, or the segment was collected")]
    PositionOutOfRange { segment: u64, offset: u64, first: u64, last: u64 },

    /// Options are inconsistent.
    #[error("invalid journal options: {0}")]
    InvalidOptions(String),

    /// The identity does not fit in a segment header.
    #[error("invalid journal identity {ident:?}: {reason}")]
    InvalidIdent { ident: JournalIdent, reason: String },
}

pub type Result<T, E = JournalError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.into();
    move |source| JournalError::Io { path, source }
}
