//! Failure injection inside the crate: a failed write (disk full) or a
//! failed fdatasync must reach every waiting appender, poison the journal,
//! and leave it readable up to the last durable record. A failed
//! preallocation is no failure of the journal at all.

use std::sync::atomic::Ordering;

use crate::pb::{self, journal_record::Kind};
use crate::{Journal, JournalError, JournalIdent, JournalOptions, Position, WriteMode};

fn ident() -> JournalIdent {
    JournalIdent { cluster_id: "c".into(), host_id: "h".into() }
}

fn commit(tid: u64) -> pb::JournalRecord {
    pb::JournalRecord { kind: Some(Kind::Commit(pb::CommitMarker { tid, epoch: 1 })) }
}

fn read_count(j: &Journal) -> usize {
    j.read_from(Position::default()).unwrap().inspect(|r| assert!(r.is_ok(), "{r:?}")).count()
}

#[test]
fn failed_fsync_poisons_and_reads_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    j.append(&commit(1)).unwrap();
    j.append(&commit(2)).unwrap();
    j.faults().fail_next_sync.store(true, Ordering::SeqCst);
    let err = j.append(&commit(3)).unwrap_err();
    assert!(matches!(err, JournalError::Io { .. }), "{err}");
    let err = j.append(&commit(4)).unwrap_err();
    assert!(matches!(err, JournalError::Poisoned { .. }), "{err}");
    assert!(err.to_string().contains("fdatasync"), "{err}");
    // Readers see exactly the durable records.
    assert_eq!(read_count(&j), 2);
    assert_eq!(j.summarize(0).unwrap().tids.len(), 2);
}

#[test]
fn disk_full_reaches_every_waiting_appender() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    let j = std::sync::Arc::new(j);
    j.append(&commit(1)).unwrap();
    j.inject_write_failure();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let j = j.clone();
            std::thread::spawn(move || j.append(&commit(10 + i)))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Whichever batch met the failure got the I/O error; all later ones are
    // refused as poisoned; nothing succeeded after the failure.
    assert!(results.iter().all(|r| r.is_err()), "{results:?}");
    assert!(results.iter().any(|r| matches!(r, Err(JournalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::StorageFull)));
    assert_eq!(read_count(&j), 1);
    drop(j);
    // Reopen recovers: the journal accepts appends again.
    let (j, report) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    assert_eq!(report.records, 1);
    j.append(&commit(2)).unwrap();
}

/// Where `fallocate` fails, that segment's appends grow the file as they
/// did before preallocation (buffered: the file is exactly its records;
/// direct: up to the end of the last block written, zeros after the
/// records), the next segment is preallocated again, and the journal works
/// as ever, across a roll and a reopen.
#[test]
fn without_preallocation_appends_grow_the_file() {
    for write_mode in [WriteMode::Buffered, WriteMode::DirectIfSupported] {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions { segment_bytes_max: 4096, write_mode, ..JournalOptions::default() };
        let path = dir.path().join(crate::format::segment_file_name(1));
        let (j, _) = Journal::open(dir.path(), ident(), opts.clone()).unwrap();
        j.faults().fail_next_preallocate.store(true, Ordering::SeqCst);
        let mut end = 0;
        for tid in 1..=3 {
            let at = j.append(&commit(tid)).unwrap();
            end = at.offset + crate::format::encode_frame(&commit(tid)).len() as u64;
            let file = std::fs::read(&path).unwrap();
            if write_mode == WriteMode::Buffered {
                assert_eq!(file.len() as u64, end, "the file is exactly its records");
            } else {
                assert!(file.len() as u64 >= end && file.len() as u64 <= end.next_multiple_of(crate::direct::BLOCK), "{}", file.len());
                assert!(file[end as usize..].iter().all(|&b| b == 0), "zeros after the records");
            }
        }
        let mut last = Position::default();
        for tid in 4..=300 {
            last = j.append(&commit(tid)).unwrap();
        }
        assert!(j.segments().1 > 1, "rolled");
        assert!(std::fs::metadata(&path).unwrap().len() > end);
        let active = dir.path().join(crate::format::segment_file_name(last.segment));
        let records_end = last.offset + crate::format::encode_frame(&commit(300)).len() as u64;
        let len = std::fs::metadata(&active).unwrap().len();
        assert!(len >= opts.segment_bytes_max.max(records_end), "the next segment is preallocated again ({write_mode:?}, {len})");
        assert_eq!(read_count(&j), 300);
        drop(j);
        let (j, report) = Journal::open(dir.path(), ident(), opts).unwrap();
        assert_eq!((report.records, report.torn_tail_bytes), (300, 0));
        j.append(&commit(301)).unwrap();
        assert_eq!(read_count(&j), 301);
    }
}
