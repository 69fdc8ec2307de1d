//! The replay read-ahead: one blocking reader thread streams the journaled
//! steps of a run of replayed tids, tid after tid and step after step,
//! ahead of the engine, bounded in steps.
//!
//! **Which tids.** The tid opened first, then each next tid as long as it
//! and the one before it both have their commit markers in the journal.
//! Then the records of every tid read ahead are final: a committed tid's
//! steps are all journaled, and replaying the one before it appends nothing
//! to them (the same rule the per-tid read-ahead had). The last tid of a
//! recovery, the one that never committed, is read only when it is opened
//! itself, and it is always the last of its run.
//!
//! **Why one reader for the run, not one per tid.** Starting a blocking
//! thread for each tid cost the replaying thread a thread wake-up per tid
//! (`spawn_blocking`; ~7–9 µs of its ~85 µs per tid on the 2-core bench
//! VM, most of it in the futex wake), and a tid whose reader had not been
//! scheduled yet made its first step wait. One reader that stays ahead
//! costs one wake-up per [`CREDIT_BLOCK`] steps.
//!
//! **Bounds.** The reader runs at most [`READ_AHEAD_STEPS_MAX`] steps ahead
//! of the engine. It takes credit from a semaphore in blocks of
//! [`CREDIT_BLOCK`] steps and the engine's side gives it back as chunks
//! arrive, so a reader that has caught up is woken once a block is free,
//! not for every step taken. Dropping the [`ReplayReader`] closes the
//! semaphore and the channel, which stops the thread wherever it waits.
//!
//! Errors of the journal reach the engine's side as the step they stopped,
//! in order: the steps before them are replayed first, as with a cursor
//! per tid.

use lockstep_journal::{pb, Journal, JournalError};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// Journaled steps read ahead of the replaying engine, at most.
pub const READ_AHEAD_STEPS_MAX: usize = 256;
/// Steps of credit the reader takes at a time (and steps per chunk at
/// most): the engine's side wakes a waiting reader once per block.
pub const CREDIT_BLOCK: usize = 64;

/// What the reader thread sends: a tid's next steps, or why it stopped.
enum Chunk {
    Steps { tid: u64, steps: Vec<pb::StepRecord>, end_of_tid: bool, credit: usize },
    Failed(JournalError),
}

/// The engine's side of a reader thread (module docs).
pub struct ReplayReader {
    first: u64,
    last: u64,
    /// The tid whose steps come next.
    tid: u64,
    /// A step of `tid` was taken (or its end seen): it cannot be opened
    /// afresh with this reader.
    started: bool,
    /// Every tid through `last` was read to its end, or the reader failed.
    done: bool,
    /// Steps of `tid` received and not taken yet.
    buf: std::vec::IntoIter<pb::StepRecord>,
    /// `buf` ends `tid`.
    end_of_tid: bool,
    rx: mpsc::UnboundedReceiver<Chunk>,
    credit: Arc<Semaphore>,
}

impl ReplayReader {
    /// Starts a reader at `tid`, reading on through the tids `commits`
    /// allows (module docs).
    pub fn spawn(journal: Arc<Journal>, tid: u64, commits: &BTreeSet<u64>) -> ReplayReader {
        let mut last = tid;
        while commits.contains(&last) && commits.contains(&(last + 1)) {
            last += 1;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(READ_AHEAD_STEPS_MAX));
        let thread_credit = credit.clone();
        tokio::task::spawn_blocking(move || read(&journal, tid, last, &tx, &thread_credit));
        ReplayReader {
            first: tid,
            last,
            tid,
            started: false,
            done: false,
            buf: Vec::new().into_iter(),
            end_of_tid: false,
            rx,
            credit,
        }
    }

    /// The tids this reader reads, first and last.
    pub fn tids(&self) -> (u64, u64) {
        (self.first, self.last)
    }

    /// The tid this reader can replay from its first step, if any.
    pub fn opens(&self) -> Option<u64> {
        (!self.done && !self.started).then_some(self.tid)
    }

    /// The next journaled step of `tid`, or `None` once `tid` has no more
    /// (the reader then moves on to the next tid). `tid` must be the one
    /// the reader is at (`opens` before its first step).
    pub async fn next_step(&mut self, tid: u64) -> Option<Result<pb::StepRecord, JournalError>> {
        if self.done || tid != self.tid {
            let reason = if self.done { "has stopped" } else { "is at another tid" };
            return Some(Err(JournalError::Other(format!(
                "the replay reader of tids {}..={} {reason} (asked for tid {tid}, at tid {})",
                self.first, self.last, self.tid
            ))));
        }
        self.started = true;
        loop {
            if let Some(step) = self.buf.next() {
                return Some(Ok(step));
            }
            if self.end_of_tid {
                self.end_of_tid = false;
                if self.tid == self.last {
                    self.done = true;
                } else {
                    self.tid += 1;
                    self.started = false;
                }
                return None;
            }
            match self.rx.recv().await {
                Some(Chunk::Steps { tid: chunk_tid, steps, end_of_tid, credit }) => {
                    self.credit.add_permits(credit);
                    if chunk_tid != self.tid {
                        self.done = true;
                        return Some(Err(JournalError::Other(format!(
                            "the replay reader sent steps of tid {chunk_tid} while tid {} was being replayed",
                            self.tid
                        ))));
                    }
                    self.buf = steps.into_iter();
                    self.end_of_tid = end_of_tid;
                }
                Some(Chunk::Failed(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => {
                    self.done = true;
                    return Some(Err(JournalError::Other(format!(
                        "the replay reader of tids {}..={} stopped before the end of tid {}",
                        self.first, self.last, self.tid
                    ))));
                }
            }
        }
    }
}

impl Drop for ReplayReader {
    fn drop(&mut self) {
        // Wakes a reader waiting for credit; one about to send finds the
        // channel closed.
        self.credit.close();
    }
}

/// The reader thread's credit: taken from the semaphore a block at a time,
/// spent a chunk at a time.
struct Credit<'a> {
    semaphore: &'a Semaphore,
    /// Taken and not yet spent on a chunk.
    held: usize,
}

impl Credit<'_> {
    /// Spends `n` steps' credit (`n <= CREDIT_BLOCK`), waiting for a block
    /// if too little is held; false once the engine's side is gone.
    fn spend(&mut self, n: usize) -> bool {
        if self.held < n {
            match futures::executor::block_on(self.semaphore.acquire_many(CREDIT_BLOCK as u32)) {
                Ok(permit) => permit.forget(),
                Err(_) => return false,
            }
            self.held += CREDIT_BLOCK;
        }
        self.held -= n;
        true
    }
}

/// The reader thread: every step of `first..=last` in order, in chunks of
/// at most `CREDIT_BLOCK` steps, each tid's last chunk marked. Returns
/// when done, on the first error (sent on), or once the engine's side is
/// gone.
fn read(journal: &Journal, first: u64, last: u64, tx: &mpsc::UnboundedSender<Chunk>, semaphore: &Semaphore) {
    let mut credit = Credit { semaphore, held: 0 };
    let mut send = |tid: u64, steps: Vec<pb::StepRecord>, end_of_tid: bool| -> bool {
        // A tid's end takes credit too (one step's at least), so that a
        // run of empty tids stays bounded.
        let n = steps.len().max(1);
        credit.spend(n) && tx.send(Chunk::Steps { tid, steps, end_of_tid, credit: n }).is_ok()
    };
    for tid in first..=last {
        let steps = match journal.steps_of(tid) {
            Ok(steps) => steps,
            Err(e) => {
                let _ = tx.send(Chunk::Failed(e));
                return;
            }
        };
        let mut chunk = Vec::new();
        for step in steps {
            match step {
                Ok(step) => chunk.push(step),
                Err(e) => {
                    // The steps before the error are replayed first.
                    if chunk.is_empty() || send(tid, chunk, false) {
                        let _ = tx.send(Chunk::Failed(e));
                    }
                    return;
                }
            }
            if chunk.len() == CREDIT_BLOCK && !send(tid, std::mem::take(&mut chunk), false) {
                return;
            }
        }
        if !send(tid, chunk, true) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_journal::pb::journal_record::Kind;
    use lockstep_journal::{JournalIdent, JournalOptions};

    fn step(step: u64, tid: u64) -> pb::JournalRecord {
        pb::JournalRecord {
            kind: Some(Kind::Step(pb::StepRecord {
                step,
                prev_step: step - 1,
                tid,
                epoch: 1,
                endpoints: vec![pb::EndpointInput {
                    endpoint: "in".into(),
                    count: 1,
                    hash: step,
                    payload: Some(pb::endpoint_input::Payload::Value(step.to_le_bytes().to_vec())),
                }],
            })),
        }
    }

    fn commit(tid: u64) -> pb::JournalRecord {
        pb::JournalRecord { kind: Some(Kind::Commit(pb::CommitMarker { tid, epoch: 1 })) }
    }

    /// A journal with `steps[i]` steps in tid `i + 1`, and the commit
    /// markers of the tids in `committed` (each after its tid's steps).
    fn journal(dir: &std::path::Path, steps: &[u64], committed: &[u64]) -> (Arc<Journal>, BTreeSet<u64>) {
        let ident = JournalIdent { cluster_id: "c".into(), host_id: "h".into() };
        let (journal, _) = Journal::open(dir, ident, JournalOptions::default()).unwrap();
        let mut n = 0;
        for (i, count) in steps.iter().enumerate() {
            let tid = i as u64 + 1;
            for _ in 0..*count {
                n += 1;
                journal.append(&step(n, tid)).unwrap();
            }
            if committed.contains(&tid) {
                journal.append(&commit(tid)).unwrap();
            }
        }
        (Arc::new(journal), committed.iter().copied().collect())
    }

    /// Every step of `tid` from the reader, checking it opens `tid` first.
    async fn drain(reader: &mut ReplayReader, tid: u64) -> Vec<u64> {
        assert_eq!(reader.opens(), Some(tid));
        let mut steps = Vec::new();
        while let Some(step) = reader.next_step(tid).await {
            let step = step.unwrap();
            assert_eq!(step.tid, tid);
            steps.push(step.step);
        }
        steps
    }

    #[tokio::test]
    async fn reads_on_while_a_tid_and_the_next_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        // Tid 3 has no steps; tid 5 never committed.
        let (journal, commits) = journal(dir.path(), &[2, 1, 0, 3, 2], &[1, 2, 3, 4]);
        let mut reader = ReplayReader::spawn(journal.clone(), 1, &commits);
        assert_eq!(reader.tids(), (1, 4), "tid 5 has no commit marker: read only when opened itself");
        assert_eq!(drain(&mut reader, 1).await, [1, 2]);
        assert_eq!(drain(&mut reader, 2).await, [3]);
        assert_eq!(drain(&mut reader, 3).await, Vec::<u64>::new());
        assert_eq!(drain(&mut reader, 4).await, [4, 5, 6]);
        assert_eq!(reader.opens(), None, "the run is read");
        let mut last = ReplayReader::spawn(journal, 5, &commits);
        assert_eq!(last.tids(), (5, 5));
        assert_eq!(drain(&mut last, 5).await, [7, 8]);
    }

    #[tokio::test]
    async fn a_gap_in_the_commit_markers_ends_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, commits) = journal(dir.path(), &[1, 1, 1], &[1, 3]);
        assert_eq!(ReplayReader::spawn(journal.clone(), 1, &commits).tids(), (1, 1));
        assert_eq!(ReplayReader::spawn(journal.clone(), 2, &commits).tids(), (2, 2));
        assert_eq!(ReplayReader::spawn(journal, 3, &commits).tids(), (3, 3));
    }

    /// Far more steps than the reader may hold ahead: all of them arrive,
    /// in order, in chunks, and taking one from a started tid, or from a
    /// tid other than the one it is at, is an error rather than a skip.
    #[tokio::test]
    async fn a_run_longer_than_the_read_ahead_arrives_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let long = (READ_AHEAD_STEPS_MAX + 3 * CREDIT_BLOCK + 5) as u64;
        let (journal, commits) = journal(dir.path(), &[long, 7, long], &[1, 2, 3]);
        let mut reader = ReplayReader::spawn(journal, 1, &commits);
        assert_eq!(drain(&mut reader, 1).await, (1..=long).collect::<Vec<_>>());
        assert!(reader.next_step(3).await.is_some_and(|r| r.is_err()), "tid 2 comes first");
        assert_eq!(reader.opens(), Some(2), "a refused request takes nothing");
        assert_eq!(reader.next_step(2).await.map(|r| r.unwrap().step), Some(long + 1));
        assert_eq!(reader.opens(), None, "tid 2 has started");
        let mut rest = vec![long + 1];
        while let Some(step) = reader.next_step(2).await {
            rest.push(step.unwrap().step);
        }
        assert_eq!(rest, (long + 1..=long + 7).collect::<Vec<_>>());
        assert_eq!(drain(&mut reader, 3).await, (long + 8..=2 * long + 7).collect::<Vec<_>>());
    }

    /// A reader dropped while its thread waits for credit stops the
    /// thread (the blocking pool would otherwise keep it forever).
    #[test]
    fn dropping_the_reader_stops_its_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().max_blocking_threads(1).build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (journal, commits) = journal(dir.path(), &[(READ_AHEAD_STEPS_MAX * 2) as u64, 1], &[1, 2]);
        let second = runtime.block_on(async {
            let reader = ReplayReader::spawn(journal.clone(), 1, &commits);
            // Once every credit is spent on chunks sent, the thread goes on
            // to wait for more (nothing is taken here).
            let full = READ_AHEAD_STEPS_MAX / CREDIT_BLOCK;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while reader.rx.len() < full {
                assert!(std::time::Instant::now() < deadline, "the reader sent {} chunks, not {full}", reader.rx.len());
                tokio::task::yield_now().await;
            }
            drop(reader);
            // With one blocking thread, a second reader runs only once the
            // first one's thread is free.
            let mut second = ReplayReader::spawn(journal, 2, &commits);
            tokio::time::timeout(std::time::Duration::from_secs(30), drain(&mut second, 2)).await
        });
        // Not waiting for a thread that may never end.
        runtime.shutdown_background();
        let steps = second.expect("the first reader's thread still waits for credit");
        assert_eq!(steps, [(READ_AHEAD_STEPS_MAX * 2 + 1) as u64]);
    }
}
