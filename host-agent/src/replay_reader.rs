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
//! costs one wake-up per [`CREDIT_BLOCK_BYTES`] read.
//!
//! **Bounds.** The reader runs at most [`READ_AHEAD_BYTES_MAX`] bytes of
//! step records ahead of the engine (their encoded size, at least
//! [`STEP_CREDIT_MIN_BYTES`] a step; a single larger step goes alone),
//! whatever the steps' sizes: a journal of large pushed records reads as
//! few steps ahead as fit, one of small steps at most 1024. It takes credit from a
//! semaphore in blocks of [`CREDIT_BLOCK_BYTES`] and the engine's side
//! gives it back as chunks arrive, so a reader that has caught up is woken
//! once a block is free, not for every step taken. Dropping the
//! [`ReplayReader`] closes the semaphore and the channel, which stops the
//! thread wherever it waits.
//!
//! Errors of the journal reach the engine's side as the step they stopped,
//! in order: the steps before them are replayed first, as with the reader
//! per tid this replaced.

use lockstep_journal::{pb, Journal, JournalError};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// Bytes of journaled steps read ahead of the replaying engine, at most
/// (plus one step larger than this, alone).
pub const READ_AHEAD_BYTES_MAX: usize = 4 << 20;
/// Bytes of credit the reader takes at a time, and of steps per chunk at
/// most: the engine's side wakes a waiting reader once per block.
pub const CREDIT_BLOCK_BYTES: usize = 1 << 20;
/// What a step counts against the read-ahead at least: small steps take
/// more memory decoded than encoded, so at most `READ_AHEAD_BYTES_MAX /
/// STEP_CREDIT_MIN_BYTES` of them (1024) are read ahead.
pub const STEP_CREDIT_MIN_BYTES: usize = 4 << 10;
/// Steps per chunk at most, so that the first steps of a tid reach the
/// engine without waiting for a whole block to be read.
pub const CHUNK_STEPS_MAX: usize = 64;

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
        while let Some(next) = last.checked_add(1).filter(|next| commits.contains(&last) && commits.contains(next)) {
            last = next;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(READ_AHEAD_BYTES_MAX));
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

    /// This reader has steps of `tid` to give, or its end.
    pub fn is_at(&self, tid: u64) -> bool {
        !self.done && self.tid == tid
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

/// The reader thread's credit, in bytes: taken from the semaphore a block
/// at a time, spent a chunk at a time.
struct Credit<'a> {
    semaphore: &'a Semaphore,
    /// Taken and not yet spent on a chunk.
    held: usize,
}

impl Credit<'_> {
    /// Spends the credit of a chunk of `bytes` (at least 1, at most all
    /// there is), waiting for more if too little is held; the amount
    /// spent, or `None` once the engine's side is gone.
    fn spend(&mut self, bytes: usize) -> Option<usize> {
        let n = bytes.clamp(1, READ_AHEAD_BYTES_MAX);
        if self.held < n {
            let more = CREDIT_BLOCK_BYTES.max(n - self.held);
            let permit = futures::executor::block_on(self.semaphore.acquire_many(more as u32)).ok()?;
            permit.forget();
            self.held += more;
        }
        self.held -= n;
        Some(n)
    }
}

/// The reader thread: every step of `first..=last` in order, in chunks of
/// at most `CHUNK_STEPS_MAX` steps and about `CREDIT_BLOCK_BYTES`, each
/// tid's last chunk marked. Returns when done, on the first error (sent
/// on), or once the engine's side is gone.
fn read(journal: &Journal, first: u64, last: u64, tx: &mpsc::UnboundedSender<Chunk>, semaphore: &Semaphore) {
    let mut credit = Credit { semaphore, held: 0 };
    let mut send = |tid: u64, steps: Vec<pb::StepRecord>, bytes: usize, end_of_tid: bool| -> bool {
        // A tid's end takes credit too (a byte at least), so that a run
        // of empty tids stays bounded.
        match credit.spend(bytes) {
            Some(credit) => tx.send(Chunk::Steps { tid, steps, end_of_tid, credit }).is_ok(),
            None => false,
        }
    };
    // One journal reader for the whole run: one open and one read buffer,
    // not one per tid.
    let mut steps = match journal.steps_of_run(first, last) {
        Ok(steps) => steps.peekable(),
        Err(e) => {
            let _ = tx.send(Chunk::Failed(e));
            return;
        }
    };
    for tid in first..=last {
        let (mut chunk, mut bytes) = (Vec::new(), 0);
        // This tid's records, and an error where it comes. The journal's
        // chain check fails a record whose tid goes back (`StepOrder`), so
        // none of an earlier tid comes; were one to, it would go with this
        // tid, where the replay refuses it by name, rather than stay at the
        // front and hold back every later tid.
        while let Some(step) = steps.next_if(|s| s.as_ref().map_or(true, |s| s.tid <= tid)) {
            match step {
                Ok(step) => {
                    bytes += prost::Message::encoded_len(&step).max(STEP_CREDIT_MIN_BYTES);
                    chunk.push(step);
                }
                Err(e) => {
                    // The steps before the error are replayed first.
                    if chunk.is_empty() || send(tid, chunk, bytes, false) {
                        let _ = tx.send(Chunk::Failed(e));
                    }
                    return;
                }
            }
            if (chunk.len() == CHUNK_STEPS_MAX || bytes >= CREDIT_BLOCK_BYTES) && !send(tid, std::mem::take(&mut chunk), std::mem::take(&mut bytes), false) {
                return;
            }
        }
        if !send(tid, chunk, bytes, true) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_journal::pb::journal_record::Kind;
    use lockstep_journal::{JournalIdent, JournalOptions};

    /// Payload bytes of each step in `journal`'s steps.
    const SMALL: usize = 8;
    /// A step this large fills the read-ahead in 64 steps.
    const LARGE: usize = READ_AHEAD_BYTES_MAX / 64;

    fn step(step: u64, tid: u64, payload: usize) -> pb::JournalRecord {
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
                    payload: Some(pb::endpoint_input::Payload::Value(vec![step as u8; payload])),
                }],
            })),
        }
    }

    fn commit(tid: u64) -> pb::JournalRecord {
        pb::JournalRecord { kind: Some(Kind::Commit(pb::CommitMarker { tid, epoch: 1 })) }
    }

    /// A journal with `steps[i]` steps in tid `i + 1`, and the commit
    /// markers of the tids in `committed` (each after its tid's steps).
    fn journal(dir: &std::path::Path, steps: &[u64], committed: &[u64], payload: usize) -> (Arc<Journal>, BTreeSet<u64>) {
        let ident = JournalIdent { cluster_id: "c".into(), host_id: "h".into() };
        let (journal, _) = Journal::open(dir, ident, JournalOptions::default()).unwrap();
        let mut n = 0;
        for (i, count) in steps.iter().enumerate() {
            let tid = i as u64 + 1;
            for _ in 0..*count {
                n += 1;
                journal.append(&step(n, tid, payload)).unwrap();
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
        let (journal, commits) = journal(dir.path(), &[2, 1, 0, 3, 2], &[1, 2, 3, 4], SMALL);
        let mut reader = ReplayReader::spawn(journal.clone(), 1, &commits);
        assert_eq!(reader.tids(), (1, 4), "tid 5 has no commit marker: read only when opened itself");
        assert_eq!(drain(&mut reader, 1).await, [1, 2]);
        assert_eq!(drain(&mut reader, 2).await, [3]);
        assert_eq!(drain(&mut reader, 3).await, Vec::<u64>::new());
        assert_eq!(drain(&mut reader, 4).await, [4, 5, 6]);
        assert_eq!(reader.opens(), None, "the run is read");
        assert!(!reader.is_at(4) && !reader.is_at(5), "nor at any tid");
        let mut last = ReplayReader::spawn(journal, 5, &commits);
        assert_eq!(last.tids(), (5, 5));
        assert_eq!(drain(&mut last, 5).await, [7, 8]);
    }

    #[tokio::test]
    async fn a_gap_in_the_commit_markers_ends_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, commits) = journal(dir.path(), &[1, 1, 1], &[1, 3], SMALL);
        assert_eq!(ReplayReader::spawn(journal.clone(), 1, &commits).tids(), (1, 1));
        assert_eq!(ReplayReader::spawn(journal.clone(), 2, &commits).tids(), (2, 2));
        assert_eq!(ReplayReader::spawn(journal, 3, &commits).tids(), (3, 3));
    }

    /// Far more bytes than the reader may hold ahead: all of them arrive,
    /// in order, in chunks, and taking one from a started tid, or from a
    /// tid other than the one it is at, is an error rather than a skip.
    #[tokio::test]
    async fn a_run_longer_than_the_read_ahead_arrives_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let long = 64 * 2 + 5;
        let (journal, commits) = journal(dir.path(), &[long, 7, long], &[1, 2, 3], LARGE);
        let mut reader = ReplayReader::spawn(journal, 1, &commits);
        assert_eq!(drain(&mut reader, 1).await, (1..=long).collect::<Vec<_>>());
        assert!(reader.next_step(3).await.is_some_and(|r| r.is_err()), "tid 2 comes first");
        assert_eq!(reader.opens(), Some(2), "a refused request takes nothing");
        assert!(reader.is_at(2) && !reader.is_at(3));
        assert_eq!(reader.next_step(2).await.map(|r| r.unwrap().step), Some(long + 1));
        assert_eq!(reader.opens(), None, "tid 2 has started");
        let mut rest = vec![long + 1];
        while let Some(step) = reader.next_step(2).await {
            rest.push(step.unwrap().step);
        }
        assert_eq!(rest, (long + 1..=long + 7).collect::<Vec<_>>());
        assert_eq!(drain(&mut reader, 3).await, (long + 8..=2 * long + 7).collect::<Vec<_>>());
    }

    /// Damage that appears after the journal was opened (bit rot, a bad
    /// sector) reaches the replay as the journal's error, naming the
    /// segment and offset, after exactly the steps before the damaged
    /// record: nothing after it is replayed, and nothing is skipped. The
    /// reader then refuses every further request instead of guessing.
    #[tokio::test]
    async fn a_record_damaged_after_open_stops_the_replay_there_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        // Records: steps 1-3 (tid 1, LARGE), commit 1, steps 4-6 (tid 2),
        // commit 2, steps 7-9 (tid 3), commit 3.
        let (journal, commits) = journal(dir.path(), &[3, 3, 3], &[1, 2, 3], LARGE);
        let segment = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .expect("a segment");
        // Halfway into step 5's payload: four large records and a small
        // commit marker come before it, after a header of under a block.
        let at = 4 * (LARGE as u64 + 64) + LARGE as u64 / 2;
        {
            use std::io::{Read, Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&segment).unwrap();
            let mut byte = [0u8];
            f.seek(SeekFrom::Start(at)).unwrap();
            f.read_exact(&mut byte).unwrap();
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[byte[0] ^ 0xff]).unwrap();
            f.sync_all().unwrap();
        }
        let mut reader = ReplayReader::spawn(journal, 1, &commits);
        assert_eq!(drain(&mut reader, 1).await, [1, 2, 3]);
        assert_eq!(reader.next_step(2).await.map(|r| r.unwrap().step), Some(4));
        let err = match reader.next_step(2).await {
            Some(Err(e)) => e.to_string(),
            other => panic!("step 5 is damaged, got {other:?}"),
        };
        assert!(err.contains("CRC32C mismatch") && err.contains(&segment.display().to_string()) && err.contains("offset"), "{err}");
        assert!(reader.next_step(2).await.is_some_and(|r| r.is_err()), "nothing after the damage is replayed");
        assert!(reader.next_step(3).await.is_some_and(|r| r.is_err()), "nor any later tid");
        assert_eq!(reader.opens(), None);
    }

    /// A reader dropped while its thread waits for credit stops the
    /// thread (the blocking pool would otherwise keep it forever).
    #[test]
    fn dropping_the_reader_stops_its_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().max_blocking_threads(1).build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (journal, commits) = journal(dir.path(), &[64 * 2, 1], &[1, 2], LARGE);
        let second = runtime.block_on(async {
            let reader = ReplayReader::spawn(journal.clone(), 1, &commits);
            // Once less than a block of credit is left, the thread's next
            // chunk (a block of large steps) waits for more, and nothing is
            // taken here.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while reader.credit.available_permits() >= CREDIT_BLOCK_BYTES {
                assert!(std::time::Instant::now() < deadline, "the reader took {} bytes of credit", READ_AHEAD_BYTES_MAX - reader.credit.available_permits());
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
        assert_eq!(steps, [64 * 2 + 1]);
    }
}
