//! The raft log of the ledger as append-only, CRC-framed segment files
//! (`<data dir>/raft-log/<seq>.seg`), with an in-memory index from log index
//! to file offset.
//!
//! Why not redb for the log: a redb write transaction rewrites a leaf, its
//! branches, the table tree root and the header (~8 page writes, ~29 KB)
//! before its fsync, where a raft append is a few hundred bytes at the end of
//! a file. Here one append batch is one synchronous direct write (or, where
//! the filesystem refuses direct I/O, one `pwrite` plus one `fdatasync`).
//!
//! This module knows bytes, not openraft types: an entry is a log index plus
//! an opaque payload (the adapter in `store` puts JSON there). Two kinds of
//! metadata live beside the entries:
//!
//! - the *committed hint* (a key, the committed index, plus opaque bytes),
//!   written after the entries of an append batch, so it costs no I/O of its
//!   own; on open the hint with the greatest key wins (committed indexes
//!   only grow, and a truncation may cut newer hints: an older one is still
//!   true);
//! - the *purge marker* (last purged index plus opaque bytes), in a file of
//!   its own, `purged`, replaced atomically (write `purged.tmp`, fsync,
//!   rename, fsync the directory) before segments below it are deleted. Not
//!   in the segments, because a suffix truncation may cut any frame after
//!   an entry it removes. It also carries the committed hint of its time,
//!   since the segments it lets go may hold the newest one.
//!
//! # On-disk format
//!
//! ```text
//! segment  := header frame*
//! header   := magic "LSRAFTLG" | version u32 | crc32c(magic, version) u32    (16 bytes)
//! frame    := body_len u32 | batch_start u64 | body_crc u32 | header_crc u32 (20 bytes)
//!             body (body_len bytes)
//! body     := kind u8 | key u64 | payload
//! purged   := magic "LSPURGED" | version u32 | index u64 | len u32 | marker
//!             | has_hint u8 | hint_key u64 | len u32 | hint | crc32c(all before) u32
//! ```
//!
//! All integers little-endian, all checksums CRC32C (crc-fast).
//! `header_crc` covers the 16 header bytes before it, so a frame's length is
//! trusted before its body is read; `body_crc` covers the body. Kinds:
//! 1 entry (key = log index), 2 committed hint (key = committed index).
//! `batch_start` is the file offset at which the write that carried the
//! frame began: every frame of one append batch names the same offset.
//!
//! # Crash safety
//!
//! - **Append**: the whole batch is one write at the end of the active
//!   segment, durable when it returns; only then does [`RaftLog::append`]
//!   return (openraft's `IOFlushed` is sent after that). The next write
//!   starts only after that, so only the *last* batch of the *last* segment
//!   can be torn by a crash. The write is a direct one through an
//!   `O_DIRECT | O_DSYNC` descriptor (`lockstep_journal::direct`): it
//!   covers whole 4 KiB blocks, so it carries the bytes of earlier batches
//!   in its first block again, unchanged (a torn write cannot alter bytes
//!   whose old and new content are the same), and zeros after the batch to
//!   the block's end. It wakes the writer once where `pwrite` + `fdatasync`
//!   waits for the data and then for a cache flush: on the bench VM an
//!   append takes 40-47 µs against 59-70 µs in `raft::bench`; in the live
//!   benchmark the ledger part of a commit fell by ~23 µs at p50 in one set
//!   of alternated runs and by less than the noise in another
//!   (docs/BENCHMARKS.md, session 25). Where the filesystem refuses direct
//!   I/O (`EINVAL` at open or at the first write), or the direct descriptor
//!   cannot be opened, the log says so once and appends with `pwrite` +
//!   `fdatasync` from then on ([`WriteMode`]).
//! - **Torn tail**: on open, a bad frame in the last segment is a torn tail
//!   (cut, with a warning) unless an intact frame *of a later write* follows
//!   it (a valid frame whose `batch_start` lies beyond the bad frame): then
//!   the bad bytes had been acknowledged and open fails with
//!   [`LogError::Corrupt`] naming file and offset. A bad frame in any other
//!   segment is always `Corrupt`. Damage inside the very last batch cannot
//!   be told from a torn write; every write-ahead log shares that limit.
//! - **Suffix truncation** (raft `truncate`): later segments are deleted
//!   newest first and the directory fsynced, then the segment holding the
//!   cut is `ftruncate`d and fsynced. A crash part-way leaves the old log or
//!   a prefix of it, never a hole.
//! - **Prefix purge** (raft `purge`): the purge marker is made durable
//!   first, then every segment whose entries are all at or below it is
//!   deleted and the directory fsynced. Entries at or below the marker in a
//!   segment that also holds later ones stay in the file, hidden; open
//!   finishes a purge that a crash interrupted.
//! - A new segment's header is fsynced, and then the directory, before the
//!   segment receives frames; a last segment whose header never became
//!   complete (whatever follows it is zeros) is removed on open.
//! - **Preallocation**: the active segment is allocated up to the segment
//!   size when it is created (`fallocate`: zeros, the file's final size),
//!   so an append overwrites allocated space and its sync has no
//!   file size or block allocation to journal. On ext4 that took a ledger
//!   write's fdatasync from ~100-130 µs to ~65 µs, and its p99 from
//!   milliseconds (a journal commit behind other files' writes) to a few
//!   hundred µs; the ledger write is on every commit's path. The
//!   frames therefore end in zeros in the last segment: on open, the
//!   first frame position from which every byte is zero ends the log (no
//!   torn tail, nothing to cut). A full segment is cut back to its frames,
//!   and fsynced, before the next one is created, so every segment but the
//!   last is exactly its frames and a zero in it is damage. Only the last
//!   batch is ever unsynced (see Append), so zeros where its pages never
//!   reached the disk, with some later page of it that did, are a torn
//!   tail like any other. Where `fallocate` is not supported, the file
//!   grows with each append as before.
//! - A failed write or fsync poisons the log: after a failed `fsync` the
//!   page cache says nothing about the disk, so every later write is
//!   refused ([`LogError::Poisoned`]) until a restart re-reads the files.
//!
//! The log takes no file lock of its own: the caller must hold an exclusive
//! lock on the data directory (the ledger opens `ledger.redb`, whose lock
//! that is, first, and closes it last).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use lockstep_journal::direct::{Appender, Written};
pub use lockstep_journal::direct::WriteMode;
use tracing::warn;

const SEGMENT_MAGIC: [u8; 8] = *b"LSRAFTLG";
const PURGED_MAGIC: [u8; 8] = *b"LSPURGED";
const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: u64 = 16;
/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 20;
/// `kind` + `key` at the start of every body.
const BODY_PREFIX_BYTES: usize = 9;
/// Upper bound on one frame body: far above any ledger entry, and it keeps a
/// damaged length from asking for a huge allocation.
const MAX_BODY_BYTES: usize = 64 << 20;
const MAX_PAYLOAD_BYTES: usize = MAX_BODY_BYTES - BODY_PREFIX_BYTES;
/// Start a new segment once the active one holds this many bytes. The ledger
/// snapshots every ~1000 entries of a few hundred bytes, so a purge
/// typically frees a segment or two.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 20;
const SEGMENT_SUFFIX: &str = ".seg";
/// The purge marker file, and the name it is written under first.
pub const PURGED_FILE: &str = "purged";
const PURGED_TMP: &str = "purged.tmp";

const KIND_ENTRY: u8 = 1;
const KIND_COMMITTED: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("raft log: {op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "raft log file {path} is damaged at byte {offset}: {what}; the log cannot be trusted from there on: \
         restore the data directory from a backup or, in a multi-node group, rebuild this member from the others: RemoveNode it on the leader, start it on an empty data \
         directory with --join instead of --peers, then AddNode it (docs/OPERATIONS.md, \"A coordinator member \
         that cannot rejoin\")"
    )]
    Corrupt { path: PathBuf, offset: u64, what: String },
    #[error("{path} is not a file of this Lockstep raft log ({what}); move it out of the raft log directory")]
    Foreign { path: PathBuf, what: String },
    #[error("raft log: append of index {got} does not follow the log (expected {expected}); refusing to leave a hole")]
    NotContiguous { expected: u64, got: u64 },
    #[error("raft log: a record of {bytes} bytes exceeds the limit of {MAX_PAYLOAD_BYTES} bytes")]
    TooLarge { bytes: usize },
    #[error(
        "raft log in {dir} refuses writes: an earlier write or fsync failed, so its on-disk state is uncertain; \
         restart the coordinator (it re-reads the log from disk)"
    )]
    Poisoned { dir: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io { op, path: path.to_path_buf(), source }
}

fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(bytes)
}

/// Little-endian integer at the start of `b` (callers check the length).
fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn segment_header() -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32c(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}{SEGMENT_SUFFIX}")
}

/// The sequence number of a well-named segment file.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Appends one frame to `out`; `batch_start` is the file offset of `out[0]`.
fn encode_frame(out: &mut Vec<u8>, batch_start: u64, kind: u8, key: u64, payload: &[u8]) {
    let at = out.len();
    let body_len = (BODY_PREFIX_BYTES + payload.len()) as u32;
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&batch_start.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]); // both CRCs, filled in below
    out.push(kind);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(payload);
    let body_crc = crc32c(&out[at + FRAME_HEADER_BYTES..]);
    out[at + 12..at + 16].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c(&out[at..at + 16]);
    out[at + 16..at + 20].copy_from_slice(&header_crc.to_le_bytes());
}

/// A frame that passed both checksums.
struct Frame {
    kind: u8,
    key: u64,
    batch_start: u64,
    /// Offset of the payload in the segment.
    payload_at: usize,
    payload_len: u32,
    /// Offset just past the frame.
    end: usize,
}

/// Parses the frame at `at` of a segment's bytes; `Err` says what is wrong.
fn parse_frame(buf: &[u8], at: usize) -> Result<Frame, String> {
    let rest = &buf[at..];
    if rest.len() < FRAME_HEADER_BYTES {
        return Err(format!("incomplete frame header ({} of {FRAME_HEADER_BYTES} bytes)", rest.len()));
    }
    if crc32c(&rest[..16]) != le_u32(&rest[16..]) {
        return Err("frame header checksum mismatch".into());
    }
    let body_len = le_u32(rest) as usize;
    let batch_start = le_u64(&rest[4..]);
    if !(BODY_PREFIX_BYTES..=MAX_BODY_BYTES).contains(&body_len) || batch_start > at as u64 {
        return Err(format!("implausible frame header (body {body_len} bytes, batch start {batch_start})"));
    }
    let Some(body) = rest.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_len) else {
        return Err(format!(
            "frame runs past the end of the file ({body_len} body bytes declared, {} present)",
            rest.len() - FRAME_HEADER_BYTES
        ));
    };
    if crc32c(body) != le_u32(&rest[12..]) {
        return Err("frame body checksum mismatch".into());
    }
    Ok(Frame {
        kind: body[0],
        key: le_u64(&body[1..]),
        batch_start,
        payload_at: at + FRAME_HEADER_BYTES + BODY_PREFIX_BYTES,
        payload_len: (body_len - BODY_PREFIX_BYTES) as u32,
        end: at + FRAME_HEADER_BYTES + body_len,
    })
}

/// The offset of an intact frame after `bad` that a later write than the
/// one at `bad` put there, if any: proof that the bytes at `bad` had been
/// acknowledged, so they are damage, not a torn write. Runs on open only,
/// and only after a bad frame.
fn later_write(buf: &[u8], bad: usize) -> Option<usize> {
    (bad + 1..buf.len().saturating_sub(FRAME_HEADER_BYTES - 1))
        .find(|&q| parse_frame(buf, q).is_ok_and(|f| f.batch_start > bad as u64))
}

/// Whether every byte from `at` on is zero: space preallocated and never
/// written, the end of the frames of the last segment.
fn zeros_from(buf: &[u8], at: usize) -> bool {
    buf.get(at..).is_none_or(|rest| rest.iter().all(|&b| b == 0))
}

/// Allocates `from..to` of `file` (zeros; the file's size becomes `to`)
/// so that appends there need no metadata in their fdatasync (module doc,
/// "Preallocation"). Best effort: where the filesystem cannot, appends
/// grow the file as they would without it.
fn preallocate(file: &File, path: &Path, from: u64, to: u64) {
    if let Err(e) = lockstep_journal::prealloc::fallocate(file, from, to) {
        // Once per segment: the ledger write on every commit's path then
        // also commits a file size in its fdatasync.
        warn!(segment = %path.display(), "raft log: cannot preallocate ({e}); appends grow the file instead, and each ledger write's fdatasync costs more (filesystem without fallocate, or the disk nearly full)");
    }
}

/// The purge marker as stored in [`PURGED_FILE`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Purged {
    index: u64,
    marker: Vec<u8>,
    hint: Option<(u64, Vec<u8>)>,
}

impl Purged {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&PURGED_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&(self.marker.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.marker);
        let (has, key, hint) = match &self.hint {
            Some((k, h)) => (1u8, *k, h.as_slice()),
            None => (0, 0, &[][..]),
        };
        out.push(has);
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&(hint.len() as u32).to_le_bytes());
        out.extend_from_slice(hint);
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// `Err((offset, what))`.
    fn decode(b: &[u8]) -> Result<Purged, (u64, String)> {
        let short = |at: usize| (at as u64, "the file ends early".to_string());
        if b.len() < 4 || crc32c(&b[..b.len() - 4]) != le_u32(&b[b.len() - 4..]) {
            return Err((0, "checksum mismatch".into()));
        }
        if b.len() < 24 || b[..8] != PURGED_MAGIC || le_u32(&b[8..]) != FORMAT_VERSION {
            return Err((0, "not a purge marker of this format version".into()));
        }
        let index = le_u64(&b[12..]);
        let mut at = 20;
        let n = le_u32(&b[at..]) as usize;
        at += 4;
        let marker = b.get(at..at + n).ok_or_else(|| short(at))?.to_vec();
        at += n;
        let fixed = b.get(at..at + 13).ok_or_else(|| short(at))?;
        let (has, key, n) = (fixed[0], le_u64(&fixed[1..]), le_u32(&fixed[9..]) as usize);
        at += 13;
        let hint = b.get(at..at + n).ok_or_else(|| short(at))?.to_vec();
        if at + n + 4 != b.len() {
            return Err((at as u64, "trailing bytes".into()));
        }
        Ok(Purged { index, marker, hint: (has == 1).then_some((key, hint)) })
    }
}

/// Where an entry's payload is.
#[derive(Clone, Copy, Debug)]
struct Loc {
    seg: u64,
    /// Offset of the entry's frame (where a truncation cuts).
    frame: u64,
    payload_len: u32,
}

impl Loc {
    fn payload_at(&self) -> u64 {
        self.frame + (FRAME_HEADER_BYTES + BODY_PREFIX_BYTES) as u64
    }
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of valid data (the next frame goes here).
    len: u64,
    /// Smallest and largest entry index in the file, hidden ones included.
    entries: Option<(u64, u64)>,
}

impl Segment {
    /// Cuts the preallocated space after the frames off, durably, so that a
    /// segment that is no longer the last one is exactly its frames.
    fn trim(&self) -> Result<(), LogError> {
        let size = self.file.metadata().map_err(io_err("reading the size of", &self.path))?.len();
        if size > self.len {
            self.file.set_len(self.len).and_then(|()| self.file.sync_all()).map_err(io_err("trimming", &self.path))?;
        }
        Ok(())
    }

    fn add_entries(&mut self, first: u64, last: u64) {
        self.entries = Some(self.entries.map_or((first, last), |(a, b)| (a.min(first), b.max(last))));
    }
}

struct State {
    /// By sequence number; the last one is the active segment.
    segments: BTreeMap<u64, Segment>,
    /// Locations of the visible entries, `first..first + locs.len()`.
    locs: VecDeque<Loc>,
    first: u64,
    purged: Option<Purged>,
    /// The newest committed hint (key, bytes).
    committed: Option<(u64, Vec<u8>)>,
    /// Sequence number of the next new segment: never reused, so file
    /// order stays log order even after every segment was purged.
    next_seq: u64,
    poisoned: bool,
}

impl State {
    fn last_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64 - 1)
    }

    /// The index the next append must start with; `None`: any (empty log).
    fn next_index(&self) -> Option<u64> {
        match (self.last_index(), &self.purged) {
            (Some(l), _) => Some(l + 1),
            (None, Some(p)) => Some(p.index + 1),
            (None, None) => None,
        }
    }

    fn writable(&self, dir: &Path) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned { dir: dir.to_path_buf() });
        }
        Ok(())
    }

    fn segment(&self, seq: u64) -> Result<&Segment, LogError> {
        self.segments.get(&seq).ok_or_else(|| missing_segment(seq))
    }

    /// The active segment, a new one first if there is none or it is full.
    fn active(&mut self, dir: &Path, segment_bytes: u64) -> Result<(u64, &mut Segment), LogError> {
        if self.segments.values().next_back().is_none_or(|s| s.len >= segment_bytes) {
            if let Some(full) = self.segments.values().next_back() {
                full.trim()?;
            }
            self.create_segment(dir, segment_bytes)?;
        }
        self.segments
            .iter_mut()
            .next_back()
            .map(|(&seq, s)| (seq, s))
            .ok_or_else(|| missing_segment(0))
    }

    /// Creates the next segment, preallocated to `segment_bytes`, header
    /// durable and directory entry durable.
    fn create_segment(&mut self, dir: &Path, segment_bytes: u64) -> Result<(), LogError> {
        let seq = self.next_seq;
        let path = dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        file.write_all_at(&segment_header(), 0).map_err(io_err("writing the header of", &path))?;
        preallocate(&file, &path, SEGMENT_HEADER_BYTES, segment_bytes);
        file.sync_all()
            .map_err(io_err("writing the header of", &path))?;
        sync_dir(dir)?;
        self.segments.insert(seq, Segment { path, file: Arc::new(file), len: SEGMENT_HEADER_BYTES, entries: None });
        self.next_seq = seq + 1;
        Ok(())
    }

    /// Deletes the segments `doomed` says hold nothing visible, then fsyncs
    /// the directory; returns their paths.
    fn delete_segments(&mut self, dir: &Path, doomed: impl Fn(&Segment) -> bool) -> Result<Vec<PathBuf>, LogError> {
        let seqs: Vec<u64> = self.segments.iter().filter(|(_, s)| doomed(s)).map(|(&seq, _)| seq).collect();
        let mut removed = Vec::new();
        for seq in seqs {
            if let Some(s) = self.segments.remove(&seq) {
                std::fs::remove_file(&s.path).map_err(io_err("deleting purged segment", &s.path))?;
                removed.push(s.path);
            }
        }
        if !removed.is_empty() {
            sync_dir(dir)?;
        }
        Ok(removed)
    }
}

fn missing_segment(seq: u64) -> LogError {
    LogError::Io {
        op: "finding",
        path: PathBuf::from(segment_name(seq)),
        source: io::Error::new(io::ErrorKind::NotFound, "segment not in the raft log index"),
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every state change is made after its I/O succeeded, so a poisoned
    // lock (there is no panic path while held) still guards a consistent state.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`RaftLog::open`] found and repaired, for the caller's log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    /// (file, offset, bytes) of a torn tail that was cut off.
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// Files removed: a segment whose creation a crash interrupted, segments
    /// a crash left behind while purging, a half-written purge marker.
    pub removed: Vec<PathBuf>,
}

/// The raft log files of one node. Reads may run concurrently with each
/// other and with a write; writes (`append`, `truncate`, `purge`) are
/// serialised.
pub struct RaftLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Held for the whole of a write: appends write and sync without the
    /// state lock (readers are not held up by the fsync), and no other
    /// write may start meanwhile.
    writer: Mutex<Appender>,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// One intact frame found while reading the segments on open.
struct Found {
    seg: u64,
    at: u64,
    kind: u8,
    key: u64,
    payload_len: u32,
    /// Payload bytes of a committed hint (entries are read on demand).
    hint: Option<Vec<u8>>,
}

impl RaftLog {
    /// Opens the log in `dir` (created if missing), checking every frame.
    /// A torn tail is cut off (and reported); damage elsewhere is an error.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(RaftLog, OpenReport), LogError> {
        Self::open_with(dir, segment_bytes, WriteMode::DirectIfSupported)
    }

    /// [`RaftLog::open`], with appends written as `mode` says.
    pub fn open_with(dir: &Path, segment_bytes: u64, mode: WriteMode) -> Result<(RaftLog, OpenReport), LogError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut report = OpenReport::default();
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let item = item.map_err(io_err("listing", dir))?;
            let name = item.file_name();
            let name = name.to_str().unwrap_or_default();
            match parse_segment_name(name) {
                Some(seq) if item.path().is_file() => seqs.push(seq),
                _ if name == PURGED_FILE && item.path().is_file() => {}
                _ if name == PURGED_TMP && item.path().is_file() => {
                    // A purge marker whose write a crash interrupted; the
                    // previous marker (if any) is still in place.
                    std::fs::remove_file(item.path()).map_err(io_err("deleting", &item.path()))?;
                    report.removed.push(item.path());
                }
                _ => {
                    return Err(LogError::Foreign {
                        path: item.path(),
                        what: format!("only <20 digits>{SEGMENT_SUFFIX} and {PURGED_FILE:?} belong here"),
                    })
                }
            }
        }
        seqs.sort_unstable();

        let purged_path = dir.join(PURGED_FILE);
        let purged = match std::fs::read(&purged_path) {
            Ok(b) => Some(Purged::decode(&b).map_err(|(offset, what)| LogError::Corrupt {
                path: purged_path.clone(),
                offset,
                what: format!("purge marker: {what}"),
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("reading", &purged_path)(e)),
        };

        let mut segments = BTreeMap::new();
        let mut found = Vec::new();
        for (i, &seq) in seqs.iter().enumerate() {
            let is_last = i + 1 == seqs.len();
            let path = dir.join(segment_name(seq));
            match Self::open_segment(&path, seq, is_last, &mut found, &mut report)? {
                Some(seg) => {
                    segments.insert(seq, seg);
                }
                None => {
                    std::fs::remove_file(&path).map_err(io_err("deleting", &path))?;
                    warn!(segment = %path.display(), "raft log: removed a segment whose creation was interrupted");
                    report.removed.push(path);
                }
            }
        }
        if !report.removed.is_empty() {
            sync_dir(dir)?;
        }

        let purged_index = purged.as_ref().map(|p| p.index);
        let mut committed = purged.as_ref().and_then(|p| p.hint.clone());
        let mut locs = VecDeque::new();
        let mut first = purged_index.map_or(0, |p| p + 1);
        let mut expected = purged_index.map(|p| p + 1);
        for f in found {
            if f.kind == KIND_COMMITTED {
                // Greatest key wins; among equal keys the later one.
                if committed.as_ref().is_none_or(|(k, _)| *k <= f.key) {
                    committed = f.hint.map(|h| (f.key, h));
                }
                continue;
            }
            if let Some(s) = segments.get_mut(&f.seg) {
                s.add_entries(f.key, f.key);
            }
            if purged_index.is_some_and(|p| f.key <= p) {
                continue;
            }
            if let Some(e) = expected.filter(|&e| e != f.key) {
                let path = segments.get(&f.seg).map(|s| s.path.clone()).unwrap_or_default();
                return Err(LogError::Corrupt {
                    path,
                    offset: f.at,
                    what: format!(
                        "entry {} where entry {e} was expected (entries are missing or repeated: was a segment \
                         file removed or restored from elsewhere?)",
                        f.key
                    ),
                });
            }
            if locs.is_empty() {
                first = f.key;
            }
            locs.push_back(Loc { seg: f.seg, frame: f.at, payload_len: f.payload_len });
            expected = Some(f.key + 1);
        }
        let next_seq = seqs.last().map_or(1, |s| s + 1);
        let mut state = State { segments, locs, first, purged, committed, next_seq, poisoned: false };
        if let Some(p) = purged_index {
            // Finish a purge that a crash interrupted.
            let removed = state.delete_segments(dir, |s| s.entries.is_some_and(|(_, last)| last <= p))?;
            report.removed.extend(removed);
        }
        report.segments = state.segments.len();
        if let Some(last) = state.segments.values().next_back() {
            // Entries a killed process wrote but never synced are still in
            // the page cache: the scan read them, and openraft will be told
            // they are in the log (and may count this node for them). Made
            // durable before that, not by whichever later sync happens to
            // cover them (a direct append flushes only its own blocks).
            last.file.sync_data().map_err(io_err("syncing", &last.path))?;
            // Written before preallocation, or cut back to its frames (a torn
            // tail): allocated again for the appends to come.
            preallocate(&last.file, &last.path, last.len, segment_bytes);
        }
        let log = RaftLog { dir: dir.to_path_buf(), segment_bytes, state: Mutex::new(state), writer: Mutex::new(Appender::new("raft log", mode)) };
        Ok((log, report))
    }

    /// Reads and checks one segment, pushing its frames to `found`. `None`:
    /// this is the last segment and its header was never completely written.
    fn open_segment(
        path: &Path,
        seq: u64,
        is_last: bool,
        found: &mut Vec<Found>,
        report: &mut OpenReport,
    ) -> Result<Option<Segment>, LogError> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err("opening", path))?;
        let mut buf = Vec::new();
        io::Read::read_to_end(&mut &file, &mut buf).map_err(io_err("reading", path))?;
        let header = segment_header();
        let hl = SEGMENT_HEADER_BYTES as usize;
        // Nothing is written after the header before the header is synced
        // (what follows it then is nothing, or preallocated zeros).
        if is_last && buf.get(..hl) != Some(&header[..]) && zeros_from(&buf, hl.min(buf.len())) {
            return Ok(None);
        }
        if buf.len() < hl || buf[..hl] != header {
            let what = if buf.len() >= 12 && buf[..8] == SEGMENT_MAGIC {
                format!("segment header damaged or of another format version (version field {})", le_u32(&buf[8..]))
            } else {
                "no raft log segment header".into()
            };
            return Err(LogError::Foreign { path: path.to_path_buf(), what });
        }
        let mut at = hl;
        while at < buf.len() {
            let frame = match parse_frame(&buf, at) {
                Ok(f) if matches!(f.kind, KIND_ENTRY | KIND_COMMITTED) => f,
                Ok(f) => {
                    return Err(LogError::Corrupt {
                        path: path.to_path_buf(),
                        offset: at as u64,
                        what: format!("unknown record kind {}", f.kind),
                    })
                }
                Err(_) if is_last && zeros_from(&buf, at) => {
                    // Preallocated, never written: the end of the log.
                    buf.truncate(at);
                    break;
                }
                Err(what) => {
                    if !is_last {
                        return Err(LogError::Corrupt { path: path.to_path_buf(), offset: at as u64, what });
                    }
                    if let Some(q) = later_write(&buf, at) {
                        return Err(LogError::Corrupt {
                            path: path.to_path_buf(),
                            offset: at as u64,
                            what: format!("{what}, and a later write at byte {q} is intact, so this is not a torn tail"),
                        });
                    }
                    let cut = (buf.len() - at) as u64;
                    file.set_len(at as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(io_err("cutting the torn tail of", path))?;
                    warn!(
                        segment = %path.display(), offset = at, bytes = cut, reason = %what,
                        "raft log: cut a torn tail (the last write before a crash, never acknowledged)"
                    );
                    report.torn_tail = Some((path.to_path_buf(), at as u64, cut));
                    buf.truncate(at);
                    break;
                }
            };
            let hint = (frame.kind == KIND_COMMITTED)
                .then(|| buf[frame.payload_at..frame.payload_at + frame.payload_len as usize].to_vec());
            found.push(Found {
                seg: seq,
                at: at as u64,
                kind: frame.kind,
                key: frame.key,
                payload_len: frame.payload_len,
                hint,
            });
            at = frame.end;
        }
        Ok(Some(Segment { path: path.to_path_buf(), file: Arc::new(file), len: buf.len() as u64, entries: None }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Index of the first visible entry, if any.
    pub fn first_index(&self) -> Option<u64> {
        let st = lock(&self.state);
        (!st.locs.is_empty()).then_some(st.first)
    }

    pub fn last_index(&self) -> Option<u64> {
        lock(&self.state).last_index()
    }

    /// Whether the last append went as one direct, synchronous write
    /// rather than a buffered write and `fdatasync`; false before the first
    /// append and after a truncate or purge.
    pub fn last_append_direct(&self) -> bool {
        lock(&self.writer).last_direct()
    }

    /// The purge marker: (last purged index, its bytes).
    pub fn purged(&self) -> Option<(u64, Vec<u8>)> {
        lock(&self.state).purged.as_ref().map(|p| (p.index, p.marker.clone()))
    }

    /// The newest committed hint: (key, bytes).
    pub fn committed(&self) -> Option<(u64, Vec<u8>)> {
        lock(&self.state).committed.clone()
    }

    /// The visible entries with index in `first..=last` (those that exist).
    pub fn read(&self, first: u64, last: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let st = lock(&self.state);
        let Some(end) = st.last_index() else {
            return Ok(Vec::new());
        };
        let (from, to) = (first.max(st.first), last.min(end));
        if from > to {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((to - from + 1).min(4096) as usize);
        for i in from..=to {
            let loc = st.locs[(i - st.first) as usize];
            let seg = st.segment(loc.seg)?;
            let mut payload = vec![0u8; loc.payload_len as usize];
            seg.file
                .read_exact_at(&mut payload, loc.payload_at())
                .map_err(io_err("reading", &seg.path))?;
            out.push((i, payload));
        }
        Ok(out)
    }

    /// Appends `entries` (consecutive indexes following the log) and then,
    /// if given, a committed hint (key, bytes); returns once all of it is
    /// durable. Leading entries at or below the purge point are skipped:
    /// the snapshot that allowed the purge holds them (openraft's storage
    /// suite appends such entries after `get_initial_state` purged up to
    /// the state machine's last applied id).
    pub fn append(&self, entries: &[(u64, Vec<u8>)], committed: Option<(u64, &[u8])>) -> Result<(), LogError> {
        if entries.is_empty() && committed.is_none() {
            return Ok(());
        }
        let mut writer = lock(&self.writer);
        let mut entries = entries;
        let (seq, file, path, start) = {
            let mut st = lock(&self.state);
            st.writable(&self.dir)?;
            if let Some(p) = st.purged.as_ref().map(|p| p.index) {
                let covered = entries.iter().take_while(|(i, _)| *i <= p).count();
                entries = &entries[covered..];
                if entries.is_empty() && committed.is_none() {
                    return Ok(());
                }
            }
            let mut expected = st.next_index();
            for (i, payload) in entries {
                if let Some(e) = expected.filter(|e| e != i) {
                    return Err(LogError::NotContiguous { expected: e, got: *i });
                }
                if payload.len() > MAX_PAYLOAD_BYTES {
                    return Err(LogError::TooLarge { bytes: payload.len() });
                }
                expected = Some(i + 1);
            }
            if let Some((_, c)) = committed.filter(|(_, c)| c.len() > MAX_PAYLOAD_BYTES) {
                return Err(LogError::TooLarge { bytes: c.len() });
            }
            let (seq, seg) = match st.active(&self.dir, self.segment_bytes) {
                Ok(a) => a,
                Err(e) => {
                    st.poisoned = true;
                    return Err(e);
                }
            };
            (seq, seg.file.clone(), seg.path.clone(), seg.len)
        };

        let frame_bytes = |p: usize| FRAME_HEADER_BYTES + BODY_PREFIX_BYTES + p;
        let size = entries.iter().map(|(_, p)| frame_bytes(p.len())).sum::<usize>()
            + committed.map_or(0, |(_, c)| frame_bytes(c.len()));
        let mut buf = Vec::with_capacity(size);
        let mut locs = Vec::with_capacity(entries.len());
        for (i, payload) in entries {
            locs.push(Loc { seg: seq, frame: start + buf.len() as u64, payload_len: payload.len() as u32 });
            encode_frame(&mut buf, start, KIND_ENTRY, *i, payload);
        }
        if let Some((key, c)) = committed {
            // After the entries: a hint that survives a crash never names an
            // entry its own write did not make durable.
            encode_frame(&mut buf, start, KIND_COMMITTED, key, c);
        }
        // The one durable write of this batch, without the state lock:
        // reads of earlier entries go on meanwhile.
        let res = writer.write(seq, &file, &path, start, &buf).and_then(|w| match w {
            Written::Durable => Ok(()),
            Written::NeedsSync => file.sync_data(),
        });

        let mut st = lock(&self.state);
        if let Err(e) = res {
            st.poisoned = true;
            return Err(LogError::Io { op: "appending to", path, source: e });
        }
        if let Some(seg) = st.segments.get_mut(&seq) {
            seg.len = start + buf.len() as u64;
            if let (Some((a, _)), Some((b, _))) = (entries.first(), entries.last()) {
                seg.add_entries(*a, *b);
            }
        }
        if let Some((i, _)) = entries.first() {
            if st.locs.is_empty() {
                st.first = *i;
            }
            st.locs.extend(locs);
        }
        if let Some((key, c)) = committed {
            st.committed = Some((key, c.to_vec()));
        }
        Ok(())
    }

    /// Removes the entries from index `from` on (raft `truncate`); durable
    /// when it returns.
    pub fn truncate(&self, from: u64) -> Result<(), LogError> {
        let mut writer = lock(&self.writer);
        // Segments are cut or deleted: the next append opens its own handle.
        writer.forget();
        let mut st = lock(&self.state);
        st.writable(&self.dir)?;
        let Some(last) = st.last_index() else {
            return Ok(());
        };
        if from > last {
            return Ok(());
        }
        let from = from.max(st.first);
        let cut = st.locs[(from - st.first) as usize];
        let res = Self::cut(&mut st, &self.dir, cut, from, self.segment_bytes);
        if res.is_err() {
            st.poisoned = true;
        }
        res?;
        let keep = (from - st.first) as usize;
        st.locs.truncate(keep);
        Ok(())
    }

    fn cut(st: &mut State, dir: &Path, cut: Loc, from: u64, segment_bytes: u64) -> Result<(), LogError> {
        // Newest first, and the directory synced before the cut: a crash
        // part-way must leave a prefix of the log, never a hole.
        let later: Vec<u64> = st.segments.range(cut.seg + 1..).map(|(&s, _)| s).rev().collect();
        for seq in &later {
            if let Some(s) = st.segments.remove(seq) {
                std::fs::remove_file(&s.path).map_err(io_err("deleting truncated segment", &s.path))?;
            }
        }
        if !later.is_empty() {
            sync_dir(dir)?;
        }
        let seg = st.segments.get_mut(&cut.seg).ok_or_else(|| missing_segment(cut.seg))?;
        seg.file.set_len(cut.frame).map_err(io_err("truncating", &seg.path))?;
        // The cut segment is the last one again.
        preallocate(&seg.file, &seg.path, cut.frame, segment_bytes);
        seg.file.sync_all().map_err(io_err("truncating", &seg.path))?;
        seg.len = cut.frame;
        seg.entries = seg.entries.and_then(|(a, _)| (a < from).then(|| (a, from - 1)));
        Ok(())
    }

    /// Purges the entries up to and including `upto` (raft `purge`), storing
    /// `marker` as the purge marker. `upto` may lie beyond the last entry
    /// (a snapshot was installed): the next append then starts at `upto + 1`.
    pub fn purge(&self, upto: u64, marker: &[u8]) -> Result<(), LogError> {
        let mut writer = lock(&self.writer);
        // Segments are cut or deleted: the next append opens its own handle.
        writer.forget();
        let mut st = lock(&self.state);
        st.writable(&self.dir)?;
        if st.purged.as_ref().is_some_and(|p| p.index >= upto) {
            return Ok(());
        }
        let purged = Purged { index: upto, marker: marker.to_vec(), hint: st.committed.clone() };
        let res = self.write_purged(&purged).and_then(|()| {
            st.delete_segments(&self.dir, |s| s.entries.is_none_or(|(_, last)| last <= upto))
        });
        if res.is_err() {
            st.poisoned = true;
        }
        res?;
        st.purged = Some(purged);
        while st.first <= upto && !st.locs.is_empty() {
            st.locs.pop_front();
            st.first += 1;
        }
        if st.locs.is_empty() {
            st.first = upto + 1;
        }
        Ok(())
    }

    /// Replaces the purge marker atomically.
    fn write_purged(&self, p: &Purged) -> Result<(), LogError> {
        let tmp = self.dir.join(PURGED_TMP);
        let path = self.dir.join(PURGED_FILE);
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        io::Write::write_all(&mut f, &p.encode())
            .and_then(|()| f.sync_all())
            .map_err(io_err("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lockstep_journal::direct::{DirectError, DirectTail, Refusal};
    use proptest::prelude::*;

    use super::*;

    fn payload(i: u64, salt: u8) -> Vec<u8> {
        // Varying sizes, so frames do not all line up.
        let n = 20 + (i as usize * 7 + salt as usize) % 90;
        (0..n).map(|k| (k as u8) ^ (i as u8) ^ salt).collect()
    }

    fn batch(range: std::ops::RangeInclusive<u64>, salt: u8) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, payload(i, salt))).collect()
    }

    fn all(log: &RaftLog) -> Vec<(u64, Vec<u8>)> {
        match (log.first_index(), log.last_index()) {
            (Some(f), Some(l)) => log.read(f, l).unwrap(),
            _ => Vec::new(),
        }
    }

    fn open(dir: &Path, seg: u64) -> (RaftLog, OpenReport) {
        RaftLog::open(dir, seg).unwrap()
    }

    fn seg_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    /// Offsets of every frame of a segment file (checked), up to its
    /// preallocated zeros.
    fn frames(path: &Path) -> Vec<(usize, Frame)> {
        let buf = std::fs::read(path).unwrap();
        let mut at = SEGMENT_HEADER_BYTES as usize;
        let mut out = Vec::new();
        while !zeros_from(&buf, at) {
            let f = parse_frame(&buf, at).unwrap();
            let next = f.end;
            out.push((at, f));
            at = next;
        }
        out
    }

    #[test]
    fn reopen_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        let mut want = Vec::new();
        {
            let (log, report) = open(&dir, 300);
            assert_eq!(report, OpenReport::default());
            assert_eq!((log.first_index(), log.last_index(), log.committed()), (None, None, None));
            for (k, r) in [(0u64..=0), (1..=4), (5..=5), (6..=20)].into_iter().enumerate() {
                let b = batch(r, 1);
                let hint = format!("c{k}");
                log.append(&b, Some((k as u64, hint.as_bytes()))).unwrap();
                want.extend(b);
            }
            assert_eq!(all(&log), want);
            assert!(seg_files(&dir).len() > 1, "small segments rotate");
        }
        let (log, report) = open(&dir, 300);
        assert_eq!(report.torn_tail, None);
        assert_eq!(report.segments, seg_files(&dir).len());
        assert_eq!(all(&log), want);
        assert_eq!((log.first_index(), log.last_index()), (Some(0), Some(20)));
        assert_eq!(log.committed(), Some((3, b"c3".to_vec())));
        assert_eq!(log.read(7, 9).unwrap(), want[7..=9].to_vec());
        assert_eq!(log.read(18, 100).unwrap(), want[18..].to_vec());
        assert!(log.read(21, 30).unwrap().is_empty());
        // Appends continue where the log ends, and only there.
        assert!(matches!(log.append(&batch(22..=22, 1), None), Err(LogError::NotContiguous { expected: 21, got: 22 })));
        log.append(&batch(21..=21, 1), None).unwrap();
        assert_eq!(log.last_index(), Some(21));
    }

    /// Entries a killed process wrote but never synced sit in the page
    /// cache, and the next open reads them as part of the log. The open
    /// makes them durable before openraft is told they are there.
    /// (Simulated with `pagecache::redirty`.)
    #[test]
    fn open_makes_what_the_page_cache_holds_of_the_last_segment_durable() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        open(&dir, 1 << 16).0.append(&batch(0..=9, 1), None).unwrap();
        let path = seg_files(&dir).pop().unwrap();
        let Some(file) = lockstep_journal::pagecache::redirty(&path).unwrap() else {
            return eprintln!("dirty pages cannot be seen here; skipping");
        };
        let (log, _) = open(&dir, 1 << 16);
        assert_eq!(log.last_index(), Some(9));
        assert_eq!(lockstep_journal::pagecache::unwritten_pages(&file).unwrap(), Some(0), "all of the last segment is on disk once open");
    }

    /// A crash during the last write leaves any prefix of its bytes: every
    /// such prefix is cut back to the previous write, nothing before it is
    /// lost, and the log accepts appends again.
    #[test]
    fn torn_tail_at_every_offset_of_the_last_record_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        let mut want = Vec::new();
        {
            let (log, _) = open(&dir, 4096);
            for r in [(1u64..=3), (4..=6), (7..=7)] {
                let b = batch(r, 2);
                log.append(&b, None).unwrap();
                want.extend(b);
            }
        }
        let seg = seg_files(&dir).pop().unwrap();
        let (last_at, last) = frames(&seg).pop().unwrap();
        let len = last.end as u64;
        want.pop();
        for cut in last_at as u64..len {
            let t = d.path().join(format!("cut{cut}"));
            copy_dir(&dir, &t);
            let name = t.join(seg.file_name().unwrap());
            OpenOptions::new().write(true).open(&name).unwrap().set_len(cut).unwrap();
            let (log, report) = open(&t, 4096);
            assert_eq!(report.torn_tail, (cut > last_at as u64).then(|| (name.clone(), last_at as u64, cut - last_at as u64)));
            assert_eq!(all(&log), want, "cut at {cut}");
            let bytes = std::fs::read(&name).unwrap();
            assert!(zeros_from(&bytes, last_at), "the torn bytes are gone (cut, and the space preallocated again)");
            assert_eq!(bytes.len(), 4096, "preallocated again");
            log.append(&batch(7..=8, 3), None).unwrap();
            drop(log);
            let (log, report) = open(&t, 4096);
            assert_eq!(report.torn_tail, None);
            assert_eq!(log.last_index(), Some(8));
            assert_eq!(log.read(7, 8).unwrap(), batch(7..=8, 3));
        }
    }

    /// Garbage after the last write (a torn multi-record batch whose later
    /// pages reached the disk, or zeroes of an extended file) is a torn
    /// tail as well, as long as no later write follows.
    #[test]
    fn damage_within_the_last_batch_is_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        {
            let (log, _) = open(&dir, 1 << 20);
            log.append(&batch(1..=3, 0), None).unwrap();
            log.append(&batch(4..=9, 0), None).unwrap();
        }
        let seg = seg_files(&dir).pop().unwrap();
        let fr = frames(&seg);
        let (at4, _) = fr[3];
        let mut bytes = std::fs::read(&seg).unwrap();
        // The first record of the last batch is damaged, its others intact.
        bytes[at4 + FRAME_HEADER_BYTES + 3] ^= 0x40;
        std::fs::write(&seg, &bytes).unwrap();
        let (log, report) = open(&dir, 1 << 20);
        assert_eq!(report.torn_tail.map(|t| t.1), Some(at4 as u64));
        assert_eq!(all(&log), batch(1..=3, 0));
    }

    /// The active segment is allocated to the segment size up front; a full
    /// one is cut back to its frames before the next is created; a reopen
    /// reads the zeros after the last frame as the end, not a torn tail.
    #[test]
    fn segments_are_preallocated_and_full_ones_trimmed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        {
            let (log, _) = open(&dir, 400);
            for r in [(1u64..=3), (4..=6), (7..=9)] {
                let key = r.start() - 1;
                log.append(&batch(r, 4), Some((key, b"hint"))).unwrap();
            }
        }
        let segs = seg_files(&dir);
        assert_eq!(segs.len(), 2);
        let full = std::fs::read(&segs[0]).unwrap();
        assert_eq!(full.len(), frames(&segs[0]).last().unwrap().1.end, "a full segment is exactly its frames");
        let active = std::fs::read(&segs[1]).unwrap();
        let end = frames(&segs[1]).last().unwrap().1.end;
        // Direct writes cover whole 4 KiB blocks, so a segment smaller than
        // one grows to the block's end, zeros too.
        assert!(active.len() >= 400, "the active segment is preallocated");
        assert!(end < 400 && zeros_from(&active, end));
        let (log, report) = open(&dir, 400);
        assert_eq!((report.torn_tail, report.removed), (None, vec![]), "zeros after the last frame are no torn tail");
        assert_eq!(all(&log), batch(1..=9, 4));
        log.append(&batch(10..=10, 4), None).unwrap();
        assert_eq!(log.read(10, 10).unwrap(), batch(10..=10, 4));
    }

    /// A crash in the middle of the last write into preallocated space
    /// leaves its bytes, or some of them, before zeros: a torn tail, cut,
    /// and the space is zeros and preallocated again. Zeros in a segment
    /// that is not the last one are damage.
    #[test]
    fn a_torn_write_into_preallocated_space_is_cut_and_zeros_in_a_full_segment_are_damage() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        {
            let (log, _) = open(&dir, 4096);
            log.append(&batch(1..=3, 6), None).unwrap();
            log.append(&batch(4..=6, 6), None).unwrap();
        }
        let seg = seg_files(&dir).pop().unwrap();
        let fr = frames(&seg);
        let (at4, f4_end) = (fr[3].0, fr[3].1.end);
        let mut bytes = std::fs::read(&seg).unwrap();
        // Entry 4's page never reached the disk; entry 6's did.
        bytes[at4..f4_end].fill(0);
        std::fs::write(&seg, &bytes).unwrap();
        let (log, report) = open(&dir, 4096);
        assert_eq!(report.torn_tail.as_ref().map(|t| t.1), Some(at4 as u64));
        assert_eq!(all(&log), batch(1..=3, 6));
        let after = std::fs::read(&seg).unwrap();
        assert_eq!(after.len(), 4096);
        assert!(zeros_from(&after, at4), "the torn bytes are gone");
        log.append(&batch(4..=4, 7), None).unwrap();
        drop(log);
        let (log, report) = open(&dir, 4096);
        assert_eq!((report.torn_tail, report.removed), (None, vec![]));
        assert_eq!(log.read(4, 4).unwrap(), batch(4..=4, 7));
        drop(log);

        // Two segments; the first one's last frame zeroed.
        let dir = d.path().join("two");
        {
            let (log, _) = open(&dir, 300);
            for r in [(1u64..=3), (4..=6), (7..=9)] {
                log.append(&batch(r, 8), None).unwrap();
            }
        }
        let first = seg_files(&dir).remove(0);
        let (at, f) = frames(&first).pop().unwrap();
        let mut bytes = std::fs::read(&first).unwrap();
        assert_eq!(f.end, bytes.len());
        bytes[at..].fill(0);
        std::fs::write(&first, &bytes).unwrap();
        match RaftLog::open(&dir, 300) {
            Err(LogError::Corrupt { path, offset, .. }) => assert_eq!((path, offset), (first, at as u64)),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn a_flipped_byte_in_a_middle_record_is_an_error_naming_file_and_offset() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        {
            // Two segments of two batches each.
            let (log, _) = open(&dir, 400);
            for r in [(1u64..=3), (4..=6), (7..=9), (10..=12)] {
                let key = r.start() - 1;
                log.append(&batch(r, 5), Some((key, b"hint"))).unwrap();
            }
        }
        let segs = seg_files(&dir);
        assert_eq!(segs.len(), 2);
        // In the first segment (not the last one), and in the last segment
        // before its last batch.
        for (seg, frame_no) in [(&segs[0], 1), (&segs[0], 4), (&segs[1], 1)] {
            let (at, f) = frames(seg).into_iter().nth(frame_no).unwrap();
            for pos in at..f.end {
                let t = d.path().join(format!("flip{pos}-{}", seg.file_name().unwrap().to_string_lossy()));
                copy_dir(&dir, &t);
                let name = t.join(seg.file_name().unwrap());
                let mut bytes = std::fs::read(&name).unwrap();
                bytes[pos] ^= 0x01;
                std::fs::write(&name, &bytes).unwrap();
                match RaftLog::open(&t, 400) {
                    Err(LogError::Corrupt { path, offset, what }) => {
                        assert_eq!((path, offset), (name.clone(), at as u64), "byte {pos}: {what}");
                        let msg = LogError::Corrupt { path: name.clone(), offset, what }.to_string();
                        assert!(msg.contains(&name.display().to_string()) && msg.contains(&format!("byte {at}")), "{msg}");
                    }
                    other => panic!("byte {pos} of {}: expected Corrupt, got {other:?}", name.display()),
                }
            }
        }
    }

    #[test]
    fn truncate_then_append() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        let (log, _) = open(&dir, 250);
        log.append(&batch(1..=5, 0), None).unwrap();
        log.append(&batch(6..=12, 0), Some((5, b"five"))).unwrap();
        let segs = seg_files(&dir).len();
        assert!(segs >= 2);
        // Nothing to cut beyond the end.
        log.truncate(13).unwrap();
        assert_eq!(log.last_index(), Some(12));
        // A cut inside the first segment deletes the later ones.
        log.truncate(4).unwrap();
        assert_eq!(log.last_index(), Some(3));
        assert_eq!(seg_files(&dir).len(), 1);
        assert!(matches!(log.append(&batch(5..=5, 1), None), Err(LogError::NotContiguous { expected: 4, got: 5 })));
        log.append(&batch(4..=9, 1), None).unwrap();
        let mut want = batch(1..=3, 0);
        want.extend(batch(4..=9, 1));
        assert_eq!(all(&log), want);
        drop(log);
        let (log, report) = open(&dir, 250);
        assert_eq!(report.torn_tail, None);
        assert_eq!(all(&log), want);
        // The hint written after the cut entries went with them: a hint is
        // allowed to be stale, never ahead of the log.
        assert_eq!(log.committed(), None);
        // Truncating everything leaves an empty log that takes any start.
        log.truncate(1).unwrap();
        assert_eq!(log.last_index(), None);
        log.append(&batch(1..=2, 2), None).unwrap();
        drop(log);
        assert_eq!(all(&open(&dir, 250).0), batch(1..=2, 2));
    }

    #[test]
    fn purge_then_reopen() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        let (log, _) = open(&dir, 250);
        for r in [(1u64..=4), (5..=8), (9..=12), (13..=16)] {
            let key = *r.end();
            log.append(&batch(r, 0), Some((key, b"h"))).unwrap();
        }
        let before = seg_files(&dir);
        log.purge(9, b"p9").unwrap();
        let after = seg_files(&dir);
        assert!(after.len() < before.len(), "whole segments below the purge point are deleted");
        assert_eq!((log.first_index(), log.last_index()), (Some(10), Some(16)));
        assert!(log.read(1, 9).unwrap().is_empty());
        assert_eq!(log.purged(), Some((9, b"p9".to_vec())));
        // An older purge point changes nothing.
        log.purge(5, b"p5").unwrap();
        assert_eq!(log.purged(), Some((9, b"p9".to_vec())));
        drop(log);

        let (log, report) = open(&dir, 250);
        assert!(report.removed.is_empty(), "{report:?}");
        assert_eq!(all(&log), batch(10..=16, 0));
        assert_eq!(log.purged(), Some((9, b"p9".to_vec())));
        assert_eq!(log.committed(), Some((16, b"h".to_vec())));

        // Beyond the end (a snapshot was installed): everything goes, and
        // the log continues after the purge point.
        log.purge(30, b"p30").unwrap();
        assert_eq!((log.first_index(), log.last_index()), (None, None));
        assert!(seg_files(&dir).is_empty());
        // Entries the purge covers are skipped; a hole above it is refused.
        log.append(&batch(29..=30, 0), None).unwrap();
        assert_eq!(log.last_index(), None);
        assert!(matches!(log.append(&batch(32..=32, 0), None), Err(LogError::NotContiguous { expected: 31, got: 32 })));
        log.append(&batch(31..=33, 1), None).unwrap();
        drop(log);
        let (log, _) = open(&dir, 250);
        assert_eq!(all(&log), batch(31..=33, 1));
        assert_eq!(log.purged(), Some((30, b"p30".to_vec())));
        assert_eq!(log.committed(), Some((16, b"h".to_vec())), "the purge marker kept the newest hint");
    }

    /// A crash after the purge marker was written but before the segments
    /// went: open finishes the purge.
    #[test]
    fn open_finishes_an_interrupted_purge() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        {
            let (log, _) = open(&dir, 200);
            for r in [(1u64..=4), (5..=8), (9..=12)] {
                log.append(&batch(r, 0), None).unwrap();
            }
        }
        let saved = d.path().join("saved");
        copy_dir(&dir, &saved);
        open(&dir, 200).0.purge(8, b"p8").unwrap();
        // Put the purged segments back, as if their deletion never happened.
        for f in seg_files(&saved) {
            let to = dir.join(f.file_name().unwrap());
            if !to.exists() {
                std::fs::copy(&f, &to).unwrap();
            }
        }
        std::fs::write(dir.join(PURGED_TMP), b"half").unwrap();
        let (log, report) = open(&dir, 200);
        assert!(report.removed.iter().any(|p| p.ends_with(PURGED_TMP)), "{report:?}");
        assert!(report.removed.len() >= 2, "{report:?}");
        assert_eq!(all(&log), batch(9..=12, 0));
    }

    #[test]
    fn foreign_files_and_formats_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        open(&dir, 200).0.append(&batch(1..=2, 0), None).unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        let err = RaftLog::open(&dir, 200).unwrap_err();
        assert!(matches!(&err, LogError::Foreign { path, .. } if path.ends_with("notes.txt")), "{err}");
        std::fs::remove_file(dir.join("notes.txt")).unwrap();

        // Another version of the segment format, as the only segment.
        let seg = seg_files(&dir).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[8] = 9;
        std::fs::write(&seg, &bytes).unwrap();
        let err = RaftLog::open(&dir, 200).unwrap_err();
        assert!(matches!(&err, LogError::Foreign { path, what } if *path == seg && what.contains("version")), "{err}");

        // A damaged purge marker.
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        open(&dir, 200).0.purge(3, b"p").unwrap();
        let p = dir.join(PURGED_FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[14] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let err = RaftLog::open(&dir, 200).unwrap_err();
        assert!(matches!(&err, LogError::Corrupt { path, .. } if *path == p), "{err}");
    }

    /// A crash while creating a segment leaves a last file shorter than its
    /// header: it is removed, and a missing segment in the middle is found.
    #[test]
    fn interrupted_segment_creation_and_missing_segments() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        {
            let (log, _) = open(&dir, 150);
            for r in [(1u64..=3), (4..=6), (7..=9)] {
                log.append(&batch(r, 0), None).unwrap();
            }
        }
        let segs = seg_files(&dir);
        assert_eq!(segs.len(), 3);
        // As `active` does before it creates the next segment: the full
        // one is cut back to its frames.
        let end = frames(&segs[2]).last().unwrap().1.end;
        OpenOptions::new().write(true).open(&segs[2]).unwrap().set_len(end as u64).unwrap();
        let next = dir.join(segment_name(4));
        std::fs::write(&next, &segment_header()[..7]).unwrap();
        let (log, report) = open(&dir, 150);
        assert_eq!(report.removed, vec![next.clone()]);
        assert_eq!(all(&log), batch(1..=9, 0));
        drop(log);

        // The same, preallocated: part of the header, then zeros.
        let mut partial = segment_header()[..5].to_vec();
        partial.resize(150, 0);
        std::fs::write(&next, &partial).unwrap();
        let (log, report) = open(&dir, 150);
        assert_eq!(report.removed, vec![next.clone()]);
        assert_eq!(all(&log), batch(1..=9, 0));
        drop(log);

        std::fs::remove_file(&segs[1]).unwrap();
        let err = RaftLog::open(&dir, 150).unwrap_err();
        assert!(
            matches!(&err, LogError::Corrupt { path, what, .. } if *path == segs[2] && what.contains("entry 7 where entry 4")),
            "{err}"
        );
    }

    /// Whether files in `dir` take direct writes (tmpfs, for one, does not).
    fn takes_direct_writes(dir: &Path) -> bool {
        let path = dir.join("probe");
        let file = File::create(&path).unwrap();
        let mut probe = match DirectTail::open(&path, &file, 0) {
            Ok(d) => d,
            Err(DirectError::Unsupported(_)) => return false,
            Err(e) => panic!("{e}"),
        };
        let ok = match probe.append(b"x") {
            Ok(()) => true,
            Err(DirectError::Unsupported(_)) => false,
            Err(e) => panic!("{e}"),
        };
        std::fs::remove_file(&path).unwrap();
        ok
    }

    /// The same appends, across segments and a truncation, read back the
    /// same after a reopen whichever way they were written; and each mode
    /// writes the way it says.
    #[test]
    fn direct_and_buffered_appends_leave_the_same_log() {
        let d = tempfile::tempdir().unwrap();
        let direct_here = takes_direct_writes(d.path());
        let mut logs = Vec::new();
        for mode in [WriteMode::DirectIfSupported, WriteMode::Buffered] {
            let dir = d.path().join(format!("{mode:?}"));
            let (log, _) = RaftLog::open_with(&dir, 700, mode).unwrap();
            // Payloads from a few bytes to more than a block, so that
            // appends end inside, at and across 4 KiB blocks.
            for (k, len) in [3usize, 200, 5000, 0, 4096, 17, 9000, 1].into_iter().enumerate() {
                let index = k as u64 + 1;
                log.append(&[(index, vec![index as u8; len])], Some((index, b"c"))).unwrap();
                assert_eq!(log.last_append_direct(), mode == WriteMode::DirectIfSupported && direct_here, "{mode:?}");
            }
            log.truncate(6).unwrap();
            log.append(&batch(6..=9, 3), None).unwrap();
            drop(log);
            let (log, report) = RaftLog::open_with(&dir, 700, mode).unwrap();
            assert_eq!(report.torn_tail, None, "{mode:?}");
            logs.push(all(&log));
        }
        assert_eq!(logs[0], logs[1]);
        assert_eq!(logs[0].len(), 9);
    }

    /// Where the filesystem refuses direct I/O, at open or at the first
    /// write, appends fall back to write + fdatasync for good and the log
    /// works as before.
    #[test]
    fn appends_fall_back_where_direct_writes_are_refused() {
        for refuse in [Refusal::AtOpen, Refusal::AtWrite] {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("log");
            let (log, _) = open(&dir, 300);
            lock(&log.writer).refuse(Some(refuse));
            log.append(&batch(1..=12, 5), Some((12, b"c"))).unwrap();
            assert!(!log.last_append_direct(), "{refuse:?}");
            lock(&log.writer).refuse(None);
            log.append(&batch(13..=14, 5), None).unwrap();
            assert!(!log.last_append_direct(), "{refuse:?}: refused once, buffered from then on");
            drop(log);
            let (log, report) = open(&dir, 300);
            assert_eq!(report.torn_tail, None);
            assert_eq!(all(&log), batch(1..=14, 5), "{refuse:?}");
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Append { n: u64, hint: bool },
        Truncate(u64),
        Purge(u64),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..6, any::<bool>()).prop_map(|(n, hint)| Op::Append { n, hint }),
            1 => (0u64..12).prop_map(Op::Truncate),
            1 => (0u64..14).prop_map(Op::Purge),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random appends, truncations, purges and reopens against a model:
        /// a map of index -> payload, the purge point and the next index.
        #[test]
        fn random_operations_match_a_model(ops in prop::collection::vec(op(), 1..40), seg in 64u64..600, buffered in any::<bool>()) {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("log");
            let mode = if buffered { WriteMode::Buffered } else { WriteMode::DirectIfSupported };
            let reopen = |dir: &Path| RaftLog::open_with(dir, seg, mode).unwrap();
            let mut log = reopen(&dir).0;
            let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut purged: Option<u64> = None;
            let mut hints: Vec<u64> = Vec::new();
            let mut salt = 0u8;
            for op in ops {
                salt = salt.wrapping_add(1);
                match op {
                    Op::Append { n, hint } => {
                        let start = model.keys().next_back().map(|l| l + 1).or(purged.map(|p| p + 1)).unwrap_or(1);
                        let b = batch(start..=start + n - 1, salt);
                        let key = start + n - 1;
                        log.append(&b, hint.then_some((key, &b"h"[..]))).unwrap();
                        if hint {
                            hints.push(key);
                        }
                        model.extend(b);
                    }
                    Op::Truncate(k) => {
                        // From somewhere in the visible log (or just past it).
                        let Some((&first, &last)) = model.keys().next().zip(model.keys().next_back()) else { continue };
                        let from = first + k % (last - first + 2);
                        log.truncate(from).unwrap();
                        model.retain(|&i, _| i < from);
                    }
                    Op::Purge(k) => {
                        let base = purged.map_or(0, |p| p + 1);
                        let upto = base + k;
                        log.purge(upto, &upto.to_le_bytes()).unwrap();
                        model.retain(|&i, _| i > upto);
                        purged = Some(upto);
                    }
                    Op::Reopen => {
                        drop(log);
                        let (l, report) = reopen(&dir);
                        prop_assert_eq!(report.torn_tail, None);
                        log = l;
                    }
                }
                let want: Vec<(u64, Vec<u8>)> = model.iter().map(|(i, p)| (*i, p.clone())).collect();
                prop_assert_eq!(all(&log), want);
                prop_assert_eq!(log.first_index(), model.keys().next().copied());
                prop_assert_eq!(log.last_index(), model.keys().next_back().copied());
                prop_assert_eq!(log.purged().map(|(p, _)| p), purged);
                // A hint may be stale (cut by a truncation), never invented.
                if let Some((key, _)) = log.committed() {
                    prop_assert!(hints.contains(&key));
                }
            }
        }
    }
}
