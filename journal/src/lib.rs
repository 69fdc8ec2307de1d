//! The step journal of one Lockstep host (DESIGN section 6).
//!
//! A journal is a directory of segment files. Each host appends one record
//! per engine step (before running the step), a commit marker per committed
//! tid and a checkpoint record per checkpoint; after a crash it reads them
//! back tid by tid to replay.
//!
//! # Layout and guarantees
//!
//! - Segments `NNNNNNNNNNNNNNNNNNNN.seg` (20-digit sequence number), each
//!   starting with a header (magic, format version, segment number, the
//!   last step before it, cluster id, host id, CRC32C); records are framed
//!   as length + CRC32C + prost body. See [`format`](mod@format) for the byte layout.
//! - [`Journal::append`] returns once the record is durable (group commit:
//!   one durable write for every record queued meanwhile, no batch timer).
//!   That write is direct and synchronous (`O_DIRECT | O_DSYNC`, see
//!   [`direct`]) where the filesystem takes it, else `pwrite` +
//!   `fdatasync`; a direct write covers whole 4 KiB blocks, so it leaves
//!   zeros after the records to its last block's end, which are read as
//!   preallocated space (below).
//! - Step records form a chain (`prev_step` of each is the `step` of the one
//!   before; tids never go backwards). `append` refuses a record that would
//!   break it; readers check it and report a gap as a typed error.
//! - On open, zeros after the last record of the last segment are its
//!   preallocated space (see "Preallocation"): the end of the records,
//!   nothing to repair. A torn tail of the last segment (an interrupted
//!   append: short frame or bad CRC with nothing valid after it, zeros
//!   included) is cut off with a warning and counted in
//!   [`OpenReport::torn_tail_bytes`]. Any other damage — bad CRC elsewhere,
//!   zeros in any other segment, a missing segment, a foreign header, an
//!   unknown format version — is a [`JournalError`] naming file, offset,
//!   expected vs found and what to do. Nothing is skipped silently.
//! - A failed write or fsync poisons the journal: further appends fail, and
//!   readers still see everything up to the last durable record.
//!
//! # Versioning policy
//!
//! The framing (segment header, record frame) carries an explicit format
//! version in every segment header. This build writes
//! [`format::FORMAT_VERSION`] (1) and reads every version listed in
//! [`format::FORMAT_VERSIONS_READ`] (`[1]`). Rules:
//!
//! 1. Any change to the header or frame layout, the CRC, or the meaning of
//!    a record field bumps the format version.
//! 2. A build that writes version N keeps reading every version it listed
//!    before, for at least one release; dropping a version is announced
//!    and needs the journal to be drained (a checkpoint + GC) first.
//! 3. A segment with a version not in the list is refused with
//!    [`JournalError::UnsupportedVersion`] naming the file, the version
//!    found and the versions supported; it is never guessed at.
//! 4. New segments are always written in the current version; a journal
//!    may mix versions across segments (an upgrade mid-journal).
//! 5. Record bodies are protobuf: adding fields with new numbers is
//!    compatible and needs no bump (old readers skip them); renumbering or
//!    changing a field's type is not allowed.
//!
//! Preallocation (below) changed no byte of the format and needs no bump:
//! a journal written before it is a journal whose last segment has no zero
//! tail, and opens as it always did. A build from before it opening a
//! journal written since sees the zero tail as a torn tail (a frame length
//! of 0 with nothing valid after it) and cuts it with a warning: no record
//! is lost, and that build then grows the file as it always did.
//!
//! # Crash safety
//!
//! Segments are created under a temporary name, header synced, renamed,
//! directory synced; so a `.seg` file always has a full header. Before a
//! new segment is created the previous one is trimmed to its records and
//! synced, so only the last segment can have a torn tail or a zero tail. GC
//! deletes the oldest segments first and syncs the directory after each,
//! so a crash mid-GC leaves a journal whose sequence starts later but has
//! no holes; open accepts that.
//!
//! A crash while a full segment is being trimmed, before the next segment
//! exists, leaves it the last segment, with or without its zero tail:
//! either opens cleanly.
//!
//! Limitation: a power loss may persist later pages of an unsynced batch
//! but not earlier ones (in preallocated space: zeros where the earlier
//! pages should be). Such a tail has valid frames after damaged ones,
//! which open cannot tell apart from corruption, so it refuses it (loudly)
//! rather than guessing. A killed process (no power loss) never causes it.
//!
//! # Preallocation
//!
//! Every live engine step appends a small record (~63 bytes) and waits for
//! its `fdatasync`. An append that grows the file makes that fdatasync
//! commit the new file size and block allocation through the filesystem's
//! journal (ext4: jbd2); an append into space allocated beforehand has no
//! size or allocation to commit. On the development machine (64-byte
//! `pwrite` + `fdatasync`, idle disk) that is p50 115-170 µs appending
//! against 80-110 µs overwriting space allocated with `fallocate`; under
//! load (three hosts and the coordinator fsyncing on one disk) the size
//! commits queue behind each other, and the host journal's fdatasync was
//! p50 ~315 µs. So the writer allocates the active segment ahead of its
//! records (`fallocate` mode 0: zeros, the file size covers them), 4 MiB at
//! a time up to `segment_bytes_max`, as the coordinator's raft log does.
//! `Journal::append` of a 55-byte frame, one appender, alternating builds:
//! p50 124 -> 86 µs; four such processes at once on one disk: p50 232 ->
//! 184 µs, p99 498 -> 391 µs. Where `fallocate` fails (a filesystem without
//! it, a nearly full disk), the rest of that segment grows with each batch
//! as before, with a warning; the next segment tries again. The syscall
//! wrapper is [`prealloc::fallocate`], shared with the raft log. The rules that keep this safe:
//!
//! - In the last segment, a frame position from which every byte to the
//!   end of the file is zero ends the records: not a torn tail, nothing is
//!   cut, no warning; the writer resumes there (a frame's length is never
//!   0, so zeros from a frame position on hold no record). A torn record
//!   followed by zeros is still a torn tail, and zeros followed by a valid
//!   frame are still refused (the limitation above).
//! - A full segment is trimmed to exactly its records (`set_len`, then
//!   synced) before the next segment is created, so every segment but the
//!   last is exactly its records, its length is the next header's
//!   `prev_segment_bytes`, and a zero in it is damage, a hard error.
//! - Readers never look past the published durable end of the last
//!   segment, so they never see the zeros.

pub mod checksum;
pub mod direct;
mod error;
#[cfg(test)]
mod fault_tests;
pub mod format;
mod open;
pub mod pagecache;
pub mod prealloc;
mod read;
pub mod view;
mod writer;

/// Generated record bodies (`proto/lockstep/journal/v1/journal.proto`).
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/lockstep.journal.v1.rs"));
}

pub use checksum::{record_hash, Aggregate, Checksum, Difference, EndpointChecksums};
pub use direct::WriteMode;
pub use error::{JournalError, Result};
pub use format::{decode_segment, DecodedSegment};
pub use read::{RecordIter, RecordViews, SharedRecordIter, StepsIter};

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use prost::Message;

use direct::Appender;
use error::io_err;
use writer::{Meta, Queue, Reply, Request, Shared, Writer};

/// Who owns a journal: written into every segment header and checked on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalIdent {
    pub cluster_id: String,
    pub host_id: String,
}

#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// A new segment is started once the current one reaches this size.
    /// The active segment is preallocated up to it at most (crate doc,
    /// "Preallocation").
    pub segment_bytes_max: u64,
    /// Largest encoded record accepted by `append`.
    pub record_bytes_max: u32,
    /// At most this many records share one durable write.
    pub group_commit_records_max: usize,
    /// How a batch is made durable: one direct, synchronous write where the
    /// filesystem takes it (`direct`), else `pwrite` + `fdatasync`.
    pub write_mode: WriteMode,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes_max: 64 << 20,
            record_bytes_max: 16 << 20,
            group_commit_records_max: 1024,
            write_mode: WriteMode::DirectIfSupported,
        }
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
    /// Bytes cut from a torn tail of the last segment (0 if none; zeros
    /// after the last record are preallocated space, not a torn tail).
    pub torn_tail_bytes: u64,
    /// The last step number journaled (0 = none).
    pub last_step: u64,
}

/// Per-tid view of the journal, computed without keeping payloads. Its
/// aggregate is kept as numbers only, by index into the summary's endpoint
/// table ([`JournalSummary::endpoints`]); [`JournalSummary::aggregate`]
/// gives it by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TidSummary {
    pub tid: u64,
    pub first_step: u64,
    pub last_step: u64,
    pub steps: u64,
    /// The tid's input aggregate: per endpoint its steps named, `(index in
    /// JournalSummary::endpoints, sum of their checksums)`, ascending by
    /// index, each index once.
    pub sums: Vec<(u32, Checksum)>,
    /// A commit marker for this tid is in the journal.
    pub committed: bool,
}

/// Journal summary for a host's Hello.
///
/// A Hello lists every tid after the host's newest checkpoint, so the
/// summary keeps endpoint names once (`endpoints`) and per tid only numbers:
/// a fixed-size entry and one small vector, ~130 bytes per tid with two
/// endpoints, where a map from name to checksum per tid cost ~0.5 KiB (a
/// B-tree node and a `String` per endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalSummary {
    /// Every endpoint named in a summarized tid's steps, sorted, each once.
    pub endpoints: Vec<String>,
    /// Tids that have step records or commit markers, ascending.
    pub tids: Vec<TidSummary>,
    /// Checkpoint records found (tid, location), ascending by tid.
    pub checkpoints: Vec<(u64, String)>,
    pub last_step: u64,
}

impl JournalSummary {
    /// The summary of `tid`, if the journal holds anything of it after the
    /// summarized checkpoint.
    pub fn tid(&self, tid: u64) -> Option<&TidSummary> {
        self.tids.binary_search_by_key(&tid, |t| t.tid).ok().map(|i| &self.tids[i])
    }

    /// `(endpoint, checksum)` of `t`'s aggregate, in endpoint order. `t`
    /// must be one of this summary's tids (its indices are into
    /// `self.endpoints`).
    pub fn sums<'a>(&'a self, t: &'a TidSummary) -> impl Iterator<Item = (&'a str, Checksum)> + 'a {
        t.sums.iter().map(|(i, c)| (self.endpoints[*i as usize].as_str(), *c))
    }

    /// `t`'s aggregate by endpoint name (allocates: for callers that
    /// compare or merge, not for keeping one per tid).
    pub fn aggregate(&self, t: &TidSummary) -> Aggregate {
        EndpointChecksums(self.sums(t).map(|(e, c)| (e.to_owned(), c)).collect())
    }
}

/// Handle to an open journal. `Send + Sync`; share it behind an `Arc`.
///
/// Dropping it lets the writer thread finish every queued append, then
/// joins it.
pub struct Journal {
    shared: Arc<Shared>,
    /// The commit thread (see `writer`).
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, validating every
    /// segment and truncating a torn tail of the last one.
    pub fn open(dir: impl AsRef<Path>, ident: JournalIdent, opts: JournalOptions) -> Result<(Journal, OpenReport)> {
        let dir = dir.as_ref().to_owned();
        open::check_options(&opts, &ident)?;
        let opened = open::open_dir(&dir, &ident)?;
        let opts_mode = opts.write_mode;
        let active = opened.state.active_segment;
        let size = opened.state.durable_end;
        let shared = Arc::new(Shared {
            _lock: opened.lock,
            dir: dir.clone(),
            ident,
            opts,
            state: Mutex::new(opened.state),
            gc_lock: Mutex::new(()),
            queue: Mutex::new(Queue { requests: Vec::new(), writer: None, shutdown: false, dead: false, sleeping: false }),
            work: Condvar::new(),
            fail_next_write: Default::default(),
            #[cfg(test)]
            faults: Default::default(),
        });
        let writer = Writer {
            shared: shared.clone(),
            file: opened.file,
            path: dir.join(format::segment_file_name(active)),
            segment: active,
            header_bytes: opened.header_bytes,
            size,
            allocated: opened.allocated,
            preallocate: true,
            last: opened.last,
            buf: Vec::new(),
            appender: Appender::new("journal", opts_mode),
        };
        shared.queue().writer = Some(Box::new(writer));
        let handle = {
            let shared = shared.clone();
            std::thread::Builder::new().name("journal-writer".into()).spawn(move || writer::run_commit_thread(shared))
        };
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                // Break the Shared <-> Writer cycle before failing.
                shared.queue().writer = None;
                return Err(io_err(&dir)(e));
            }
        };
        let report = opened.report;
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            records = report.records,
            torn_tail_bytes = report.torn_tail_bytes,
            last_step = report.last_step,
            "journal opened"
        );
        Ok((Journal { shared, writer: Some(handle) }, report))
    }

    /// Validates and encodes a record on the caller's thread.
    fn prepare(&self, record: &pb::JournalRecord) -> Result<(Vec<u8>, Meta)> {
        use pb::journal_record::Kind;
        let meta = match &record.kind {
            None => {
                return Err(JournalError::AppendInvalid {
                    what: "record kind",
                    expected: "step, commit or checkpoint".into(),
                    found: "none".into(),
                })
            }
            Some(Kind::Step(s)) => Meta::Step { step: s.step, prev_step: s.prev_step, tid: s.tid },
            Some(Kind::Checkpoint(c)) => Meta::Checkpoint { tid: c.tid },
            Some(Kind::Commit(_)) => Meta::Other,
        };
        let bytes = record.encoded_len() as u64;
        let record_bytes_max = self.shared.opts.record_bytes_max;
        if bytes > record_bytes_max as u64 {
            return Err(JournalError::RecordTooLarge { bytes, record_bytes_max });
        }
        if let Some(reason) = self.shared.lock().poisoned.clone() {
            return Err(JournalError::Poisoned { reason });
        }
        Ok((format::encode_frame(record), meta))
    }

    /// Appends one record and returns once it is durable (group commit).
    ///
    /// If no commit is in progress the record is written and synced on the
    /// calling thread (together with anything queued before it), so a lone
    /// appender costs one `write` + one `fdatasync`, no thread hand-off.
    /// Otherwise it joins the next batch.
    pub fn append(&self, record: &pb::JournalRecord) -> Result<Position> {
        let (frame, meta) = self.prepare(record)?;
        self.shared.append_blocking(frame, meta)
    }

    /// Async form of `append` for tokio callers; does not block the caller's
    /// thread (no I/O on it: the journal's commit thread writes the record).
    /// Resolves once the record is durable.
    ///
    /// The record is queued when this is called, not when the future is
    /// first polled, so records are journaled in call order: callers that
    /// number steps under a lock can drop the lock before awaiting.
    pub fn append_async(&self, record: pb::JournalRecord) -> impl Future<Output = Result<Position>> + Send + 'static {
        self.queue_async(record, true)
    }

    /// Like `append_async`, but the record does not start a commit of its
    /// own: it waits in the queue and becomes durable with the next
    /// append of any kind (in call order, in the same write and
    /// `fdatasync`), at [`Journal::commit_queued`], or when the journal is
    /// dropped. For a record whose durability may lag (the host's commit
    /// marker: the ledger is the record of the commit) and that would
    /// otherwise cost an `fdatasync` of its own just before the next
    /// record's. Until then readers do not see it.
    pub fn append_deferred(&self, record: pb::JournalRecord) -> impl Future<Output = Result<Position>> + Send + Sync + 'static {
        self.queue_async(record, false)
    }

    /// Queues `record` for the commit thread (waking it if `wake`); the
    /// future resolves once it is durable.
    fn queue_async(&self, record: pb::JournalRecord, wake: bool) -> impl Future<Output = Result<Position>> + Send + Sync + 'static {
        let (tx, rx) = futures_channel::oneshot::channel();
        let queued = self
            .prepare(&record)
            .and_then(|(frame, meta)| self.shared.enqueue(Request { frame, meta, reply: Reply::Async(tx) }, wake));
        async move {
            queued?;
            rx.await.map_err(|_| JournalError::WriterGone)?
        }
    }

    /// Starts committing whatever is queued (deferred records included)
    /// now; await their futures to know when they are durable.
    pub fn commit_queued(&self) {
        self.shared.wake_if_queued();
    }

    /// Streams every record from `from` (inclusive) to the durable end.
    /// `Position::default()` means the start of the journal. Memory stays
    /// bounded (one read buffer and one record).
    pub fn read_from(&self, from: Position) -> Result<impl Iterator<Item = Result<(Position, pb::JournalRecord)>>> {
        let cursor = read::Cursor::new(self.shared.span(), from)?;
        Ok(RecordIter::new(cursor))
    }

    /// Like `read_from`, but records are decoded into [`view`] types whose
    /// payloads are [`prost::bytes::Bytes`] slices of the read buffer: no
    /// per-record payload copy (the fastest way to replay). Same records,
    /// positions, checks and errors as `read_from`; `pb::JournalRecord::from`
    /// turns one into the owned form.
    pub fn read_shared_from(&self, from: Position) -> Result<SharedRecordIter> {
        let cursor = read::Cursor::new(self.shared.span(), from)?;
        Ok(SharedRecordIter::new(cursor))
    }

    /// Like `read_from`, but each record is decoded in place into a
    /// [`view::RecordView`] borrowing the read buffer: endpoint names are
    /// `&str`, payloads `&[u8]`, nothing is allocated or copied per record
    /// (the fastest way to replay). A lending iterator:
    ///
    /// ```no_run
    /// # fn f(journal: &lockstep_journal::Journal) -> lockstep_journal::Result<()> {
    /// let mut records = journal.views_from(Default::default())?;
    /// while let Some((position, record)) = records.next_record()? {
    ///     // `record` borrows `records` until the next call.
    /// #   let _ = (position, record);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Same records (`RecordView::to_pb` equals what `read_from` yields),
    /// positions, chain checks, CRC checks and errors as `read_from`.
    pub fn views_from(&self, from: Position) -> Result<RecordViews> {
        let cursor = read::Cursor::new(self.shared.span(), from)?;
        Ok(RecordViews::new(cursor))
    }

    /// Calls `f` with every record from `from` (see `views_from`), in
    /// place. Stops at the first error, of the journal or of `f`.
    pub fn for_each_record<E, F>(&self, from: Position, mut f: F) -> std::result::Result<(), E>
    where
        E: From<JournalError>,
        F: FnMut(Position, view::RecordView<'_>) -> std::result::Result<(), E>,
    {
        let mut records = self.views_from(from)?;
        while let Some((position, record)) = records.next_record()? {
            f(position, record)?;
        }
        Ok(())
    }

    /// Calls `f` with each step record of `tid`, in step order, decoded in
    /// place ([`view::StepView`]: no allocation per record). The same steps,
    /// checks and errors as `steps_of` (both read every record from the
    /// tid's first step up to, not including, the first step of a later
    /// tid: `run_span`). Stops at the
    /// first error, of the journal or of `f`; returns how many steps `f` saw.
    pub fn for_each_step<E, F>(&self, tid: u64, mut f: F) -> std::result::Result<u64, E>
    where
        E: From<JournalError>,
        F: FnMut(view::StepView<'_>) -> std::result::Result<(), E>,
    {
        let Some((span, start)) = self.run_span(tid, tid) else { return Ok(0) };
        let mut records = RecordViews::new(read::Cursor::new(span, start)?);
        let mut steps = 0;
        while let Some((_, record)) = records.next_record()? {
            if let view::RecordView::Step(step) = record {
                if step.tid > tid {
                    break;
                }
                if step.tid == tid {
                    steps += 1;
                    f(step)?;
                }
            }
        }
        Ok(steps)
    }

    /// Per-tid summary of every tid strictly after `after_tid`, plus all
    /// checkpoint records. Streams the journal; memory grows with the tids
    /// summarized (see [`JournalSummary`]), not with the journal's bytes.
    pub fn summarize(&self, after_tid: u64) -> Result<JournalSummary> {
        read::summarize(self.shared.span(), after_tid)
    }

    /// Every checkpoint record `(tid, location)`, ascending by tid: the
    /// summary without any tid, for callers that need only checkpoints.
    /// Reads (and checks) the whole journal, as `summarize` does.
    pub fn checkpoint_records(&self) -> Result<Vec<(u64, String)>> {
        Ok(read::summarize(self.shared.span(), u64::MAX)?.checkpoints)
    }

    /// The step records of one tid, in step order, streamed (reading only
    /// the part of the journal that can hold them, `run_span`).
    pub fn steps_of(&self, tid: u64) -> Result<impl Iterator<Item = Result<pb::StepRecord>>> {
        self.steps_of_run(tid, tid)
    }

    /// The step records of the tids `first..=last`, tid by tid, each in
    /// step order, streamed through one reader: a replay's read-ahead of a
    /// run of consecutive tids opens the journal and fills a read buffer
    /// once, not once per tid (an open, a stat, an fadvise, a seek and a
    /// close per tid before). A tid of the range with no step records
    /// yields nothing; each record names its tid.
    pub fn steps_of_run(&self, first: u64, last: u64) -> Result<impl Iterator<Item = Result<pb::StepRecord>>> {
        let records = match self.run_span(first, last) {
            Some((span, start)) => Some(RecordIter::new(read::Cursor::new(span, start)?)),
            None => None,
        };
        Ok(StepsIter::new(records, first, last))
    }

    /// Where the step records of the tids `first..=last` lie: from the
    /// first one of any of them up to the first step record of a tid after
    /// `last` (step records never go back to an earlier tid, so none of
    /// theirs lies beyond), else up to the durable end. `None`: the journal
    /// has no step of any of them.
    ///
    /// A reader reads no further, so its read buffer is the size of the
    /// run's records up to a whole read chunk: 256 KiB buffers (each read
    /// in full) per tid once made a host's peak RSS grow with the journal.
    fn run_span(&self, first: u64, last: u64) -> Option<(read::Span, Position)> {
        let mut span = self.shared.span();
        let st = self.shared.lock();
        let start = *st.tid_first.range(first..=last).next()?.1;
        let next = last.checked_add(1).and_then(|after| st.tid_first.range(after..).next()).map(|(_, p)| *p);
        // Only ever narrowed: a later tid appended since `span` was taken
        // lies beyond its durable end already.
        if let Some(next) = next.filter(|n| (n.segment, n.offset) < (span.last, span.last_end)) {
            span.last = next.segment;
            span.last_end = next.offset;
        }
        Some((span, start))
    }

    /// Deletes whole segments whose every record lies before the checkpoint
    /// record of `checkpoint_tid`. Crash-safe: the journal stays readable.
    /// Returns how many segments were deleted.
    pub fn gc_before_checkpoint(&self, checkpoint_tid: u64) -> Result<usize> {
        let _gc = self.shared.gc_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (first, keep_from) = {
            let mut st = self.shared.lock();
            let Some(&cp_segment) = st.checkpoints.get(&checkpoint_tid) else {
                return Err(JournalError::CheckpointNotFound { tid: checkpoint_tid });
            };
            let first = st.first_segment;
            if cp_segment <= first {
                return Ok(0);
            }
            assert!(cp_segment <= st.active_segment, "a checkpoint record lies in an existing segment");
            // Readers started from now on begin at the kept segment.
            st.first_segment = cp_segment;
            st.checkpoints.retain(|_, seg| *seg >= cp_segment);
            st.tid_first.retain(|_, pos| pos.segment >= cp_segment);
            (first, cp_segment)
        };
        // Oldest first, directory synced after each: whatever a crash
        // interrupts, what is left is a sequence without holes.
        for seq in first..keep_from {
            let path = self.shared.dir.join(format::segment_file_name(seq));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(JournalError::Io { path, source: e }),
            }
            writer::sync_dir(&self.shared.dir)?;
        }
        tracing::info!(dir = %self.shared.dir.display(), checkpoint_tid, deleted = keep_from - first, "journal segments collected");
        Ok((keep_from - first) as usize)
    }

    /// The last step number journaled durably (0 = none).
    pub fn last_step(&self) -> u64 {
        self.shared.lock().last_step
    }

    /// The first and last segment numbers currently in the journal.
    pub fn segments(&self) -> (u64, u64) {
        let st = self.shared.lock();
        (st.first_segment, st.active_segment)
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Why the journal refuses appends, if it does: a write or fdatasync
    /// failed, and what it had acknowledged may not be what the disk holds.
    /// Only reopening it (a new process) reads the truth back from disk.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.lock().poisoned.clone()
    }

    /// Fault injection for tests: the next batch's write fails as on a full
    /// disk (`StorageFull`), which poisons the journal.
    #[doc(hidden)]
    pub fn inject_write_failure(&self) {
        self.shared.fail_next_write.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(crate) fn faults(&self) -> &writer::Faults {
        &self.shared.faults
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // The commit thread commits everything queued, then exits.
        self.shared.queue().shutdown = true;
        self.shared.work.notify_all();
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!(dir = %self.shared.dir.display(), "journal writer thread panicked");
            }
        }
        // The writer holds an `Arc<Shared>`: drop it (closing the file).
        drop(self.shared.queue().writer.take());
    }
}
