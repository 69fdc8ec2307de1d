//! The ordered background sink writer: takes the sink's write and fdatasync
//! off the host's commit path.
//!
//! On `Commit{T, next: Start(T+1)}` the runtime hands T's rows to
//! [`SinkWriter::submit`] and goes on at once (opens T+1, reads the next
//! command) instead of waiting for the sink's fdatasync. One thread owns
//! the [`FileSink`]; it takes the queued tids in FIFO order and writes
//! whatever has piled up (up to [`SINK_GROUP_TIDS_MAX`] tids) with one
//! write and one fdatasync, so the file still holds one line per tid, in
//! strictly increasing tid order, and a burst of commits costs one sync.
//!
//! Why this is safe (DESIGN invariant 2, exactly once in order across
//! crashes). The ledger, not the sink, is the record that T committed. A
//! tid whose line a crash lost (queued, or written but not synced) is
//! replayed after recovery: recovery restores the newest complete
//! checkpoint and replays every committed tid after it, the journal still
//! holds their steps, and the sink writes what it lacks and skips what it
//! holds. The one exception is a checkpoint: once a checkpoint covering T
//! is complete, recovery starts after T and T is never replayed again. So
//! anything that relies on the sink holding every committed tid waits for
//! [`SinkWriter::sync`] first: the runtime's `checkpoint` (before the
//! engine checkpoint is even written), `restore`, `replay_alone`, and a
//! clean shutdown.
//!
//! Skips. A replayed tid is skipped when it is at or below the last tid
//! *queued*, not only the last durable one: a tid still in the queue will
//! be written by this process, and writing it twice would break exactly
//! once (a crash loses the queue, and then the restarted sink does not
//! hold it, so the replay writes it).
//!
//! Failures. A failed write cuts the file back to where it was and poisons
//! the writer: the failed tids and everything queued behind them are
//! dropped, never written, so no later tid can land after a gap. The
//! failure is returned once, by the next `submit` or `sync` (the runtime's
//! next commit, checkpoint or restore), which the runtime turns into an
//! error of kind `sink` that stops the host. Taking it re-arms the writer
//! at the last durable tid; that is right only because the host is then
//! Stopped and the next tids it submits come from a replay after `Restore`
//! (every checkpoint waited for the sink, so the restored one is at or
//! below the last durable tid).

use crate::sink::{EmitOutcome, FileSink, SinkBatch, SinkError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Tids queued towards the writer thread before `submit` waits for room
/// (bounds the memory of a sink that falls behind, e.g. a slow disk).
pub const SINK_QUEUE_TIDS_MAX: usize = 256;
/// Tids written with one write and one fdatasync at most.
pub const SINK_GROUP_TIDS_MAX: usize = 64;

#[derive(Clone, Debug, thiserror::Error)]
pub enum SinkWriterError {
    /// One write of tids `first_tid..=last_tid` failed; neither they nor
    /// any tid queued behind them is in the sink, whose last durable tid
    /// is `durable`.
    #[error("writing tids {first_tid}..={last_tid} to the sink failed: {cause}; nothing after tid {durable} is in the sink")]
    Write { first_tid: u64, last_tid: u64, durable: u64, cause: Arc<SinkError> },
    #[error("bug: tid {tid} handed to the sink {path} after tid {last} outside a replay; tids must strictly increase")]
    OutOfOrder { path: PathBuf, tid: u64, last: u64 },
    #[error("the sink writer thread for {path} is gone (it could not start, or panicked): {why}")]
    Gone { path: PathBuf, why: String },
}

enum Msg {
    Write(SinkBatch),
    /// The front took the last failure: write again what follows.
    Resume,
}

/// What the writer thread publishes.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Last tid durably in the file.
    durable: u64,
    /// Failures so far; the front compares with the ones it has taken.
    failures: u64,
    last_failure: Option<SinkWriterError>,
}

/// The runtime's handle on the writer thread. See the module docs.
pub struct SinkWriter {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    progress: watch::Receiver<Progress>,
    /// Last tid submitted (durable or still queued), or the last durable
    /// one right after a failure was taken.
    last_queued: u64,
    /// After start and after `expect_replay`, until a new tid is queued:
    /// tids at or below `last_queued` are skipped, not refused.
    replaying: bool,
    failures_taken: u64,
}

impl SinkWriter {
    /// Starts the writer thread, which owns `sink` from now on.
    pub fn start(sink: FileSink) -> Result<SinkWriter, SinkWriterError> {
        let path = sink.path().to_path_buf();
        let last = sink.last_emitted();
        let (tx, rx) = mpsc::channel(SINK_QUEUE_TIDS_MAX);
        let (progress_tx, progress) = watch::channel(Progress { durable: last, ..Progress::default() });
        std::thread::Builder::new()
            .name("lockstep-sink".into())
            .spawn(move || write_loop(sink, rx, progress_tx))
            .map_err(|e| SinkWriterError::Gone { path: path.clone(), why: format!("spawning the thread: {e}") })?;
        Ok(SinkWriter { path, tx, progress, last_queued: last, replaying: true, failures_taken: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Last tid submitted (written or still queued).
    pub fn last_queued(&self) -> u64 {
        self.last_queued
    }

    /// Last tid durably in the file.
    pub fn durable(&self) -> u64 {
        self.progress.borrow().durable
    }

    /// `submit(tid)` would skip `tid`: a replayed tid the sink holds or
    /// will write (it is queued).
    pub fn already_emitted(&self, tid: u64) -> bool {
        self.replaying && tid <= self.last_queued
    }

    /// A restore happened: committed tids will be replayed, and those the
    /// sink holds or has queued are to be skipped.
    pub fn expect_replay(&mut self) {
        self.replaying = true;
    }

    /// Queues `batch` for the writer thread (waiting only while the queue is
    /// full), or skips a replayed tid the sink holds or has queued. An
    /// earlier tid's failed write is returned here (once) and nothing is
    /// queued.
    pub async fn submit(&mut self, batch: SinkBatch) -> Result<EmitOutcome, SinkWriterError> {
        self.take_failure().await?;
        let tid = batch.tid;
        if tid <= self.last_queued {
            if self.replaying {
                return Ok(EmitOutcome::AlreadyEmitted);
            }
            return Err(SinkWriterError::OutOfOrder { path: self.path.clone(), tid, last: self.last_queued });
        }
        self.tx.send(Msg::Write(batch)).await.map_err(|_| self.gone())?;
        self.last_queued = tid;
        self.replaying = false;
        Ok(EmitOutcome::Queued)
    }

    /// Waits until every submitted tid is durably in the sink; returns the
    /// last one. A failed write is returned instead (once).
    pub async fn sync(&mut self) -> Result<u64, SinkWriterError> {
        let (target, taken) = (self.last_queued, self.failures_taken);
        let waited = self.progress.wait_for(|p| p.failures > taken || p.durable >= target).await.map(|p| p.durable);
        let durable = waited.map_err(|_| self.gone())?;
        self.take_failure().await?;
        Ok(durable)
    }

    /// Returns a failure the thread reported and the front has not taken
    /// yet, and re-arms the writer at the last durable tid (see the module
    /// docs for why that is safe).
    async fn take_failure(&mut self) -> Result<(), SinkWriterError> {
        let (failures, durable, failure) = {
            let p = self.progress.borrow();
            if p.failures == self.failures_taken {
                return Ok(());
            }
            (p.failures, p.durable, p.last_failure.clone())
        };
        self.failures_taken = failures;
        self.last_queued = durable;
        self.tx.send(Msg::Resume).await.map_err(|_| self.gone())?;
        Err(failure.unwrap_or_else(|| SinkWriterError::Gone {
            path: self.path.clone(),
            why: "bug: a failure was counted without its error".into(),
        }))
    }

    /// A failure the thread reported and nobody took yet (tests).
    #[cfg(test)]
    fn failure_pending(&self) -> bool {
        self.progress.borrow().failures > self.failures_taken
    }

    fn gone(&self) -> SinkWriterError {
        SinkWriterError::Gone { path: self.path.clone(), why: "its channel closed".into() }
    }
}

/// The writer thread: FIFO over the queue, one append (one fdatasync) per
/// group of queued tids. Ends when the `SinkWriter` is dropped and the
/// queue is drained.
fn write_loop(mut sink: FileSink, mut rx: mpsc::Receiver<Msg>, progress: watch::Sender<Progress>) {
    let mut poisoned = false;
    let mut group: Vec<SinkBatch> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                // Behind a failed tid nothing may be written: that tid
                // would be missing below a later one, and a replay skips
                // everything at or below the last tid in the file.
                Msg::Write(_) if poisoned => {}
                Msg::Write(batch) => group.push(batch),
                Msg::Resume => {
                    flush(&mut sink, &mut group, &mut poisoned, &progress);
                    poisoned = false;
                }
            }
            if group.len() < SINK_GROUP_TIDS_MAX {
                next = rx.try_recv().ok();
            }
        }
        flush(&mut sink, &mut group, &mut poisoned, &progress);
    }
}

fn flush(sink: &mut FileSink, group: &mut Vec<SinkBatch>, poisoned: &mut bool, progress: &watch::Sender<Progress>) {
    let (Some(first_tid), Some(last_tid)) = (group.first().map(|b| b.tid), group.last().map(|b| b.tid)) else { return };
    if *poisoned {
        group.clear();
        return;
    }
    match sink.append(group) {
        Ok(()) => {
            let durable = sink.last_emitted();
            progress.send_modify(|p| p.durable = durable);
        }
        Err(cause) => {
            let durable = sink.last_emitted();
            tracing::error!(file = %sink.path().display(), first_tid, tids = group.len(), durable, "sink write failed: {cause}; writing nothing more until the host has stopped");
            *poisoned = true;
            let failure = SinkWriterError::Write { first_tid, last_tid, durable, cause: Arc::new(cause) };
            progress.send_modify(|p| {
                p.failures += 1;
                p.last_failure = Some(failure);
            });
        }
    }
    group.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::OutputRow;
    use crate::sink::SINK_FILE_NAME;
    use serde_json::json;
    use std::time::Duration;

    fn batch(tid: u64) -> SinkBatch {
        SinkBatch { epoch: 1, tid, rows: vec![OutputRow(json!({"n": tid}))], meta: serde_json::Map::new() }
    }

    fn tids(dir: &Path) -> Vec<u64> {
        std::fs::read_to_string(dir.join(SINK_FILE_NAME))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["tid"].as_u64().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn queued_tids_are_written_in_order_and_skipped_on_replay_before_they_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SinkWriter::start(FileSink::open(dir.path()).unwrap()).unwrap();
        for tid in 1..=200 {
            assert_eq!(w.submit(batch(tid)).await.unwrap(), EmitOutcome::Queued);
        }
        // Outside a replay, going back is a bug, queued or not.
        assert!(matches!(w.submit(batch(200)).await, Err(SinkWriterError::OutOfOrder { tid: 200, last: 200, .. })));
        // A restore now: the replayed tids are skipped against the queue,
        // whether or not the thread has written them yet.
        w.expect_replay();
        for tid in [1, 150, 200] {
            assert!(w.already_emitted(tid));
            assert_eq!(w.submit(batch(tid)).await.unwrap(), EmitOutcome::AlreadyEmitted);
        }
        assert_eq!(w.submit(batch(201)).await.unwrap(), EmitOutcome::Queued);
        assert_eq!(w.sync().await.unwrap(), 201);
        assert_eq!(tids(dir.path()), (1..=201).collect::<Vec<_>>());
        drop(w);

        // Reopened, the file's last tid is where skipping starts.
        let mut w = SinkWriter::start(FileSink::open(dir.path()).unwrap()).unwrap();
        assert_eq!((w.last_queued(), w.durable()), (201, 201));
        assert_eq!(w.submit(batch(201)).await.unwrap(), EmitOutcome::AlreadyEmitted);
        assert_eq!(w.submit(batch(202)).await.unwrap(), EmitOutcome::Queued);
        assert_eq!(w.sync().await.unwrap(), 202);
        assert_eq!(tids(dir.path()).last(), Some(&202));
    }

    #[tokio::test]
    async fn a_failed_write_drops_everything_behind_it_is_reported_once_and_replay_fills_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(dir.path()).unwrap();
        sink.fail_append_at = Some(3);
        let mut w = SinkWriter::start(sink).unwrap();
        for tid in 1..=2 {
            w.submit(batch(tid)).await.unwrap();
        }
        assert_eq!(w.sync().await.unwrap(), 2);
        w.submit(batch(3)).await.unwrap();
        // Noticed by the next action (here a submit), not before.
        for _ in 0..1000 {
            if w.failure_pending() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(w.failure_pending(), "the write of tid 3 failed");
        let err = w.submit(batch(4)).await.err().unwrap();
        assert!(matches!(err, SinkWriterError::Write { first_tid: 3, durable: 2, .. }), "{err}");
        assert_eq!(w.last_queued(), 2, "re-armed at the last durable tid");
        assert_eq!(tids(dir.path()), vec![1, 2], "nothing of the failed write is left");

        // The host stopped; after a restore, the replay writes 3 and 4.
        w.expect_replay();
        for tid in 1..=4 {
            w.submit(batch(tid)).await.unwrap();
        }
        assert_eq!(w.sync().await.unwrap(), 4);
        assert_eq!(tids(dir.path()), vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn tids_queued_behind_a_failed_one_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(dir.path()).unwrap();
        sink.fail_append_at = Some(2);
        let mut w = SinkWriter::start(sink).unwrap();
        // The next `submit` or `sync` reports the failure, however far
        // behind it the queue went (when depends on the writer thread).
        let mut reported = None;
        for tid in 1..=50 {
            if let Err(e) = w.submit(batch(tid)).await {
                reported = Some(e);
                break;
            }
        }
        let err = match reported {
            Some(e) => e,
            None => w.sync().await.err().unwrap(),
        };
        // Tid 1 failed with it if both went in one write.
        assert!(matches!(err, SinkWriterError::Write { first_tid: 1 | 2, last_tid: 2.., .. }), "{err}");
        // Reported once: the writer is re-armed, and an empty sync is fine.
        let durable = w.sync().await.unwrap();
        assert_eq!(durable, w.last_queued());
        let got = tids(dir.path());
        assert!(got.len() <= 1 && got.iter().all(|t| *t == 1), "no tid after the failed one: {got:?}");
    }
}
