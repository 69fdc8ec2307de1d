//! Group commit (leader/follower) and the journal's shared durable state.
//!
//! Appenders encode their record on their own thread and put it on one
//! queue, in call order. Whoever holds the *commit token* (the [`Writer`]:
//! file, size, chain state) takes everything queued (up to
//! `group_commit_records_max`), writes the batch with one direct,
//! synchronous write (or one `write` and one `fdatasync`, where the
//! filesystem refuses direct I/O: `crate::direct`), and only then publishes
//! the new durable end and acknowledges every appender with its position.
//!
//! - A blocking `append` that finds the token free takes it and commits on
//!   its own thread (with whatever was queued before it): a lone appender
//!   pays no thread hand-off, just like a plain write + fdatasync loop.
//! - Otherwise the record waits in the queue; the commit thread (a
//!   background thread that only takes the free token when something is
//!   queued) commits it with the next batch. `append_async` always goes this
//!   way, so it never does I/O on the caller's (async runtime) thread.
//!
//! There is no batch timer. Only one committer runs at a time, and it takes
//! requests in queue order, so call order is journal order.
//!
//! Readers never see bytes past the published durable end, so a failed
//! write or fsync leaves the journal readable up to the last durable
//! record. After such a failure the journal is poisoned: Linux may drop the
//! dirty pages of a failed fsync and report success on the next one, so
//! retrying could acknowledge records that are not on disk.
//!
//! The writer also owns the active segment's preallocation (crate doc,
//! "Preallocation"): it writes each batch at its own offset, into space
//! allocated ahead of it in `PREALLOCATE_STEP_BYTES` steps, and trims a
//! full segment back to its records before the next one is created.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{io_err, JournalError, Result};
use crate::format;
use crate::read::Span;
use crate::direct::Written;
use crate::{JournalIdent, JournalOptions, Position};

/// State shared by the writer thread, readers and GC.
pub(crate) struct Shared {
    /// The journal directory's lock (`open::LOCK_FILE`), released when the
    /// last user of this state (the handle or the commit thread) drops it.
    pub _lock: std::fs::File,
    pub dir: PathBuf,
    pub ident: JournalIdent,
    pub opts: JournalOptions,
    pub state: Mutex<State>,
    /// Serialises `gc_before_checkpoint` calls.
    pub gc_lock: Mutex<()>,
    /// The append queue and the commit token.
    pub queue: Mutex<Queue>,
    /// Signals the commit thread: something is queued and the token is free,
    /// or the journal is shutting down.
    pub work: Condvar,
    /// Fault injection (`Journal::inject_write_failure`): the next write
    /// fails as on a full disk. In every build, so that the host agent's
    /// processes can be tested against it; one atomic swap per batch.
    pub fail_next_write: std::sync::atomic::AtomicBool,
    #[cfg(test)]
    pub faults: Faults,
}

#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    pub fail_next_sync: std::sync::atomic::AtomicBool,
    /// The next `fallocate` fails as on a filesystem without it.
    pub fail_next_preallocate: std::sync::atomic::AtomicBool,
}

/// How far ahead of the records the active segment is allocated at a time
/// (capped at `segment_bytes_max`). The filesystem journals the file size
/// change once per step, in the fdatasync of the batch that needed it,
/// instead of in every batch's: once per ~66 000 host step records of ~63
/// bytes. Small enough that a journal of many hosts or a mostly idle one
/// does not hold much unused disk.
pub(crate) const PREALLOCATE_STEP_BYTES: u64 = 4 << 20;

/// What is durable, and the indexes readers and GC use. Updated by the
/// writer only after the fsync that made it so.
#[derive(Debug)]
pub(crate) struct State {
    pub first_segment: u64,
    pub active_segment: u64,
    /// Durable end (bytes) of the active segment.
    pub durable_end: u64,
    pub last_step: u64,
    pub records: u64,
    /// Tid of a checkpoint record -> segment holding its first record.
    pub checkpoints: BTreeMap<u64, u64>,
    /// Tid -> position of its first step record (so `steps_of` does not
    /// scan from the start). One entry per tid since the last GC.
    pub tid_first: BTreeMap<u64, Position>,
    /// Why appends are refused, once a write or fsync failed.
    pub poisoned: Option<String>,
}

/// Appends waiting for a committer, and the commit token.
pub(crate) struct Queue {
    pub requests: Vec<Request>,
    /// The commit token: `None` while some thread is committing.
    pub writer: Option<Box<Writer>>,
    /// Set by `Journal::drop`: the commit thread drains the queue and exits.
    pub shutdown: bool,
    /// A committer panicked: the writer state is lost, appends fail with
    /// `WriterGone` (reads keep working; reopening recovers).
    pub dead: bool,
    /// The commit thread is waiting on `work` (not committing): only then
    /// does queueing need to wake it. std's `notify_one` is a futex syscall
    /// even with nobody waiting, and `append_async` callers are async
    /// runtime threads.
    pub sleeping: bool,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated
        // in a way readers care about (every update is a plain store), so
        // a poisoned mutex is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a request for the commit thread (`append_async`), waking it
    /// if `wake` and it sleeps; without `wake` (`append_deferred`) the next
    /// wake-up commits the request with whatever is queued then.
    pub fn enqueue(&self, req: Request, wake: bool) -> Result<()> {
        let mut q = self.queue();
        if q.dead || q.shutdown {
            return Err(JournalError::WriterGone);
        }
        q.requests.push(req);
        if wake {
            self.wake_commit_thread(q);
        }
        Ok(())
    }

    /// Wakes the commit thread if anything is queued (`commit_queued`).
    pub fn wake_if_queued(&self) {
        let q = self.queue();
        if !q.requests.is_empty() {
            self.wake_commit_thread(q);
        }
    }

    /// Wakes the commit thread if it sleeps and the token is free (else it
    /// finds the queue when the token comes back), after releasing `q`.
    fn wake_commit_thread(&self, q: MutexGuard<'_, Queue>) {
        let wake = q.writer.is_some() && q.sleeping;
        drop(q);
        if wake {
            self.work.notify_one();
        }
    }

    /// `append`: commits on the caller's thread if the token is free (the
    /// caller becomes the leader and also commits what was queued before
    /// it), else queues and waits for the committer to acknowledge.
    pub fn append_blocking(&self, frame: Vec<u8>, meta: Meta) -> Result<Position> {
        // This thread's completion slot (reused: no channel per append).
        let slot = SLOT.with(Arc::clone);
        // Every append takes its own result before returning; one left over
        // can only come from an append unwound by a panic (its request was
        // answered `WriterGone` while dropped): discard it.
        slot.clear();
        let req = Request { frame, meta, reply: Reply::Blocking(SlotSender(Some(slot.clone()))) };
        let batch_max = self.opts.group_commit_records_max.max(1);
        let mut q = self.queue();
        if q.dead || q.shutdown {
            return Err(JournalError::WriterGone);
        }
        if q.writer.is_some() && q.requests.len() < batch_max {
            let writer = q.writer.take().expect("checked");
            let mut batch = std::mem::take(&mut q.requests);
            drop(q);
            batch.push(req);
            let mut token = Token { shared: self, writer: Some(writer) };
            token.writer().commit(&mut batch);
            drop(token);
        } else {
            q.requests.push(req);
            self.wake_commit_thread(q);
        }
        // A leader finds its own result already there.
        slot.wait()
    }

    pub fn span(&self) -> Span {
        let st = self.lock();
        Span {
            dir: self.dir.clone(),
            ident: self.ident.clone(),
            first: st.first_segment,
            last: st.active_segment,
            last_end: st.durable_end,
        }
    }
}

/// What the writer needs to know about a record to keep the chain and the
/// indexes, computed by the appender.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Meta {
    Step { step: u64, prev_step: u64, tid: u64 },
    Checkpoint { tid: u64 },
    Other,
}

/// Where a blocking appender's result lands: one per thread, reused by
/// every `append` of that thread (it waits for its result before it can
/// append again), instead of a channel allocated per append.
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    filled: Condvar,
}

#[derive(Default)]
struct SlotState {
    result: Option<Result<Position>>,
    /// The appender sleeps on `filled`. A leader answers itself and never
    /// waits, so its answer costs no futex wake-up (std's `notify_one` is
    /// a syscall even with nobody waiting).
    waiting: bool,
}

thread_local! {
    static SLOT: Arc<Slot> = Arc::new(Slot { state: Mutex::new(SlotState::default()), filled: Condvar::new() });
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn clear(&self) {
        self.lock().result = None;
    }

    fn fill(&self, result: Result<Position>) {
        let mut st = self.lock();
        st.result = Some(result);
        let wake = st.waiting;
        drop(st);
        if wake {
            self.filled.notify_one();
        }
    }

    /// Waits for the result and takes it (the slot is empty again).
    fn wait(&self) -> Result<Position> {
        let mut st = self.lock();
        loop {
            if let Some(result) = st.result.take() {
                st.waiting = false;
                return result;
            }
            st.waiting = true;
            st = self.filled.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Answers a blocking appender exactly once: dropped unanswered (a
/// committer panicked, or the journal went away), it answers `WriterGone`,
/// as a dropped channel sender did.
pub(crate) struct SlotSender(Option<Arc<Slot>>);

impl SlotSender {
    fn send(mut self, result: Result<Position>) {
        if let Some(slot) = self.0.take() {
            slot.fill(result);
        }
    }
}

impl Drop for SlotSender {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.fill(Err(JournalError::WriterGone));
        }
    }
}

pub(crate) enum Reply {
    Blocking(SlotSender),
    Async(futures_channel::oneshot::Sender<Result<Position>>),
}

impl Reply {
    fn send(self, result: Result<Position>) {
        // An appender that gave up waiting is not an error of the journal.
        match self {
            Reply::Blocking(slot) => slot.send(result),
            Reply::Async(tx) => drop(tx.send(result)),
        }
    }
}

pub(crate) struct Request {
    pub frame: Vec<u8>,
    pub meta: Meta,
    pub reply: Reply,
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Creates segment `seq` crash-safely: header written and synced under a
/// temporary name, renamed into place, directory synced. So a segment file
/// with the final name always has a complete header.
pub(crate) fn create_segment(
    dir: &Path,
    seq: u64,
    step_before: u64,
    prev_segment_bytes: u64,
    ident: &JournalIdent,
) -> Result<(File, u64)> {
    let path = dir.join(format::segment_file_name(seq));
    let tmp = dir.join(format!("{}.tmp", format::segment_file_name(seq)));
    let header = format::encode_header(seq, step_before, prev_segment_bytes, ident);
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&header).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok((file, header.len() as u64))
}

/// The writer thread's own state.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub file: File,
    pub path: PathBuf,
    pub segment: u64,
    pub header_bytes: u64,
    /// End of the records in the active segment (durable after each
    /// batch): where the next batch is written.
    pub size: u64,
    /// Length of the active segment file as this writer made it (at least
    /// `size`; beyond `size`, zeros).
    pub allocated: u64,
    /// Cleared once `fallocate` fails (a filesystem without it, a nearly
    /// full disk): the rest of the segment grows as batches go; the next
    /// segment tries again.
    pub preallocate: bool,
    /// (step, tid) of the last step record written.
    pub last: (u64, u64),
    pub buf: Vec<u8>,
    /// Writes each batch (`crate::direct`).
    pub appender: crate::direct::Appender,
}

/// Holds the commit token; gives it back (and wakes the commit thread if
/// work is waiting) when dropped. If the committer panicked the writer
/// state cannot be trusted: the journal is marked dead and every queued
/// appender is released with `WriterGone`.
struct Token<'a> {
    shared: &'a Shared,
    writer: Option<Box<Writer>>,
}

impl Token<'_> {
    fn writer(&mut self) -> &mut Writer {
        self.writer.as_mut().expect("token holds the writer")
    }
}

impl Drop for Token<'_> {
    fn drop(&mut self) {
        let mut q = self.shared.queue();
        if std::thread::panicking() {
            q.dead = true;
            // Dropping the replies makes every waiter see `WriterGone`.
            q.requests.clear();
            drop(q);
            self.shared.work.notify_all();
            return;
        }
        q.writer = self.writer.take();
        let wake = (!q.requests.is_empty() || q.shutdown) && q.sleeping;
        drop(q);
        if wake {
            self.shared.work.notify_one();
        }
    }
}

/// The commit thread: commits whatever is queued whenever the token is free.
pub(crate) fn run_commit_thread(shared: Arc<Shared>) {
    let batch_max = shared.opts.group_commit_records_max.max(1);
    let mut q = shared.queue();
    loop {
        if q.dead {
            return;
        }
        if q.writer.is_some() && !q.requests.is_empty() {
            let writer = q.writer.take().expect("checked");
            let n = q.requests.len().min(batch_max);
            let mut batch: Vec<Request> = q.requests.drain(..n).collect();
            drop(q);
            let mut token = Token { shared: &shared, writer: Some(writer) };
            token.writer().commit(&mut batch);
            assert!(batch.is_empty(), "every request of a batch is answered");
            drop(token);
            // No polling for a follow-up append before sleeping: on a
            // machine with few cores the spin took the CPU the appender
            // needed to act on this acknowledgement, and it delayed the
            // very append it waited for.
            q = shared.queue();
            continue;
        }
        // Everything queued before shutdown is committed first (the token
        // comes back to the queue after each batch).
        if q.shutdown && q.requests.is_empty() && q.writer.is_some() {
            return;
        }
        q.sleeping = true;
        q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
        q.sleeping = false;
    }
}

impl Writer {
    fn check_chain(&self, meta: Meta) -> Result<()> {
        let Meta::Step { step, prev_step, tid } = meta else { return Ok(()) };
        let (last_step, last_tid) = self.last;
        if step <= prev_step {
            return Err(JournalError::AppendInvalid {
                what: "step number must exceed its previous step",
                expected: format!("> {prev_step}"),
                found: step.to_string(),
            });
        }
        if prev_step != last_step {
            return Err(JournalError::AppendOutOfOrder { step, expected: last_step, found: prev_step });
        }
        if tid < last_tid {
            return Err(JournalError::AppendInvalid {
                what: "tid went backwards",
                expected: format!(">= {last_tid}"),
                found: tid.to_string(),
            });
        }
        Ok(())
    }

    fn poison(&self, reason: String) {
        tracing::error!(dir = %self.shared.dir.display(), %reason, "journal poisoned: refusing further appends");
        self.shared.lock().poisoned = Some(reason);
    }

    /// Writes `self.buf` at the end of the records of the active segment
    /// (into preallocated space when there is some) and makes it durable:
    /// one direct write, or `pwrite` + `fdatasync` (`crate::direct`). With
    /// nothing to write there is nothing to do: every earlier batch was
    /// made durable by the flush that wrote it (or poisoned the journal).
    fn flush_and_sync(&mut self) -> io::Result<()> {
        if self.shared.fail_next_write.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "injected: no space left on device"));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let end = self.size + self.buf.len() as u64;
        self.preallocate_for(end);
        let written = self.appender.write(self.segment, &self.file, &self.path, self.size, &self.buf)?;
        self.size = end;
        self.allocated = self.allocated.max(end);
        self.buf.clear();
        #[cfg(test)]
        if self.shared.faults.fail_next_sync.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::other("injected: fdatasync failed"));
        }
        match written {
            Written::Durable => Ok(()),
            Written::NeedsSync => self.file.sync_data(),
        }
    }

    /// Makes sure the active segment is allocated up to `end` before a
    /// batch is written there: extends the allocation by
    /// `PREALLOCATE_STEP_BYTES`, or up to `segment_bytes_max`, or to `end`
    /// if that is further (a batch bigger than a step, or a record that
    /// makes the segment exceed its maximum). Best effort: where it fails,
    /// the write grows the file as it would without preallocation.
    fn preallocate_for(&mut self, end: u64) {
        if end <= self.allocated || !self.preallocate {
            return;
        }
        let to = (self.allocated + PREALLOCATE_STEP_BYTES).min(self.shared.opts.segment_bytes_max).max(end);
        #[cfg(test)]
        let result = if self.shared.faults.fail_next_preallocate.swap(false, std::sync::atomic::Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        } else {
            crate::prealloc::fallocate(&self.file, self.allocated, to)
        };
        #[cfg(not(test))]
        let result = crate::prealloc::fallocate(&self.file, self.allocated, to);
        match result {
            Ok(()) => self.allocated = to,
            Err(e) => {
                // Not an error of the journal: appends work as they did
                // before preallocation, only their fdatasync costs more.
                // Once per segment (the next one tries again): worth an
                // operator's notice, since every step's fdatasync now also
                // commits a file size.
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "journal: cannot preallocate the segment (filesystem without fallocate, or the disk nearly full); its appends grow the file instead, and each fdatasync costs more"
                );
                self.preallocate = false;
            }
        }
    }

    /// Cuts the active segment back to exactly its records and makes that
    /// durable, before the next segment is created: every segment but the
    /// last is exactly its records, its length is what the next header's
    /// `prev_segment_bytes` records, and a zero in it stays damage.
    fn seal(&mut self) -> Result<()> {
        let len = self.file.metadata().map_err(io_err(&self.path))?.len();
        // The file's own length, not `allocated`: an `fallocate` that
        // failed part-way may have grown it without this writer knowing.
        // A direct write also leaves zeros up to its last block's end.
        if len != self.size {
            self.file.set_len(self.size).map_err(io_err(&self.path))?;
            self.file.sync_all().map_err(io_err(&self.path))?;
        }
        Ok(())
    }

    fn fail_all(&self, reqs: impl IntoIterator<Item = Request>, err: &io::Error, path: &Path) {
        for r in reqs {
            let copy = io::Error::new(err.kind(), err.to_string());
            r.reply.send(Err(JournalError::Io { path: path.to_owned(), source: copy }));
        }
    }

    pub(crate) fn commit(&mut self, batch: &mut Vec<Request>) {
        if let Some(reason) = self.shared.lock().poisoned.clone() {
            for r in batch.drain(..) {
                r.reply.send(Err(JournalError::Poisoned { reason: reason.clone() }));
            }
            return;
        }
        let segment_bytes_max = self.shared.opts.segment_bytes_max;
        let mut accepted: Vec<(Request, Position)> = Vec::with_capacity(batch.len());
        let mut reqs = batch.drain(..);
        while let Some(req) = reqs.next() {
            if let Err(e) = self.check_chain(req.meta) {
                req.reply.send(Err(e));
                continue;
            }
            let frame_bytes = req.frame.len() as u64;
            let pending = self.size + self.buf.len() as u64;
            if pending + frame_bytes > segment_bytes_max && pending > self.header_bytes {
                // Roll. The old segment must be durable before the new one
                // exists: only the last segment may have a torn tail.
                if let Err(e) = self.flush_and_sync() {
                    let path = self.path.clone();
                    self.poison(format!("write or fdatasync of {} failed: {e}", path.display()));
                    self.fail_all(accepted.into_iter().map(|(r, _)| r).chain([req]).chain(reqs), &e, &path);
                    return;
                }
                if let Err(e) = self.roll() {
                    let reason = format!("sealing segment {} or creating segment {} failed: {e}", self.segment, self.segment + 1);
                    let io = io::Error::other(e.to_string());
                    self.poison(reason);
                    let path = self.shared.dir.clone();
                    // The records accepted so far are durable in the old
                    // segment; publish and ack them, fail the rest.
                    self.publish(accepted);
                    self.fail_all([req].into_iter().chain(reqs), &io, &path);
                    return;
                }
            }
            format::assert_frame(&req.frame);
            let pos = Position { segment: self.segment, offset: self.size + self.buf.len() as u64 };
            self.buf.extend_from_slice(&req.frame);
            if let Meta::Step { step, tid, .. } = req.meta {
                self.last = (step, tid);
            }
            accepted.push((req, pos));
        }
        drop(reqs);
        if accepted.is_empty() {
            return;
        }
        if let Err(e) = self.flush_and_sync() {
            let path = self.path.clone();
            self.poison(format!("write or fdatasync of {} failed: {e}", path.display()));
            self.fail_all(accepted.into_iter().map(|(r, _)| r), &e, &path);
            return;
        }
        self.publish(accepted);
    }

    /// Publishes durable records to readers, then acknowledges them.
    fn publish(&mut self, accepted: Vec<(Request, Position)>) {
        {
            let mut st = self.shared.lock();
            for (req, pos) in &accepted {
                match req.meta {
                    Meta::Step { step, tid, .. } => {
                        st.last_step = step;
                        st.tid_first.entry(tid).or_insert(*pos);
                    }
                    Meta::Checkpoint { tid } => {
                        st.checkpoints.entry(tid).or_insert(pos.segment);
                    }
                    Meta::Other => {}
                }
            }
            st.records += accepted.len() as u64;
            st.active_segment = self.segment;
            st.durable_end = self.size;
        }
        for (req, pos) in accepted {
            req.reply.send(Ok(pos));
        }
    }

    fn roll(&mut self) -> Result<()> {
        self.seal()?;
        let seq = self.segment + 1;
        let (file, header_bytes) = create_segment(&self.shared.dir, seq, self.last.0, self.size, &self.shared.ident)?;
        self.file = file;
        self.appender.forget();
        self.path = self.shared.dir.join(format::segment_file_name(seq));
        self.segment = seq;
        self.header_bytes = header_bytes;
        self.size = header_bytes;
        self.allocated = header_bytes;
        self.preallocate = true;
        let mut st = self.shared.lock();
        st.active_segment = seq;
        st.durable_end = header_bytes;
        Ok(())
    }
}
