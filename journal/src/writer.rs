//! The writer thread and the journal's shared durable state.
//!
//! Group commit: appenders encode their record (on their own thread), send
//! it over a channel and wait. The writer takes whatever is queued (up to
//! `group_commit_records_max`), writes the batch with one `write`, makes it
//! durable with one `fdatasync`, and only then publishes the new durable
//! end and acknowledges every appender with its position. A lone appender
//! finds the writer idle and is written at once: there is no batch timer.
//!
//! Readers never see bytes past the published durable end, so a failed
//! write or fsync leaves the journal readable up to the last durable
//! record. After such a failure the journal is poisoned: Linux may drop the
//! dirty pages of a failed fsync and report success on the next one, so
//! retrying could acknowledge records that are not on disk.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use crate::error::{io_err, JournalError, Result};
use crate::format;
use crate::read::Span;
use crate::{JournalIdent, JournalOptions, Position};

/// State shared by the writer thread, readers and GC.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub ident: JournalIdent,
    pub opts: JournalOptions,
    pub state: Mutex<State>,
    /// Serialises `gc_before_checkpoint` calls.
    pub gc_lock: Mutex<()>,
    #[cfg(test)]
    pub faults: Faults,
}

#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    pub fail_next_write: std::sync::atomic::AtomicBool,
    pub fail_next_sync: std::sync::atomic::AtomicBool,
}

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

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated
        // in a way readers care about (every update is a plain store), so
        // a poisoned mutex is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

pub(crate) enum Reply {
    Blocking(mpsc::SyncSender<Result<Position>>),
    Async(futures_channel::oneshot::Sender<Result<Position>>),
}

impl Reply {
    fn send(self, result: Result<Position>) {
        // An appender that gave up waiting is not an error of the journal.
        match self {
            Reply::Blocking(tx) => drop(tx.send(result)),
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
    /// Bytes written to the active segment (durable after each batch).
    pub size: u64,
    /// (step, tid) of the last step record written.
    pub last: (u64, u64),
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn run(mut self, rx: mpsc::Receiver<Request>) {
        let batch_max = self.shared.opts.group_commit_records_max.max(1);
        let mut batch = Vec::with_capacity(batch_max);
        // `recv` returns queued requests before reporting disconnection, so
        // everything sent before the journal is dropped is still written.
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < batch_max {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
            assert!(batch.is_empty(), "every request of a batch is answered");
        }
    }

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

    /// Writes `self.buf` to the active segment and fsyncs it.
    fn flush_and_sync(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.shared.faults.fail_next_write.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "injected: no space left on device"));
        }
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.size += self.buf.len() as u64;
            self.buf.clear();
        }
        #[cfg(test)]
        if self.shared.faults.fail_next_sync.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::other("injected: fdatasync failed"));
        }
        self.file.sync_data()
    }

    fn fail_all(&self, reqs: impl IntoIterator<Item = Request>, err: &io::Error, path: &Path) {
        for r in reqs {
            let copy = io::Error::new(err.kind(), err.to_string());
            r.reply.send(Err(JournalError::Io { path: path.to_owned(), source: copy }));
        }
    }

    fn commit(&mut self, batch: &mut Vec<Request>) {
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
                    let reason = format!("creating segment {} failed: {e}", self.segment + 1);
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
        let seq = self.segment + 1;
        let (file, header_bytes) = create_segment(&self.shared.dir, seq, self.last.0, self.size, &self.shared.ident)?;
        self.file = file;
        self.path = self.shared.dir.join(format::segment_file_name(seq));
        self.segment = seq;
        self.header_bytes = header_bytes;
        self.size = header_bytes;
        let mut st = self.shared.lock();
        st.active_segment = seq;
        st.durable_end = header_bytes;
        Ok(())
    }
}
