//! Behaviour of the journal through its public API: round trips, recovery,
//! typed errors for damaged directories, GC, and the chain check.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use lockstep_journal::format::{self, segment_file_name};
use lockstep_journal::pb::{self, journal_record::Kind};
use lockstep_journal::{Checksum, Journal, JournalError, JournalIdent, JournalOptions, Position};

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_file_name(seq))
}

fn read_all(j: &Journal) -> Vec<(Position, pb::JournalRecord)> {
    j.read_from(Position::default()).unwrap().collect::<Result<Vec<_>, _>>().unwrap()
}

/// Reopens the journal in `dir` and checks that it comes back whole: no
/// torn tail, every record of `written` counted and read back as written.
fn reopen_whole(dir: &Path, opts: JournalOptions, written: &[(Position, pb::JournalRecord)]) -> Journal {
    let (j, report) = Journal::open(dir, ident(), opts).unwrap();
    assert_eq!((report.torn_tail_bytes, report.records), (0, written.len() as u64));
    assert_eq!(read_all(&j), written);
    j
}

/// Where the records of `written`'s last segment end (the file may go on
/// with preallocated zeros).
fn records_end(written: &[(Position, pb::JournalRecord)]) -> u64 {
    let (pos, r) = written.last().expect("records written");
    pos.offset + format::encode_frame(r).len() as u64
}

/// Appends steps 1..=n, two per tid, commit markers after each tid.
fn fill(j: &Journal, n: u64, payload_bytes: usize) -> Vec<(Position, pb::JournalRecord)> {
    let mut out = Vec::new();
    for s in 1..=n {
        let tid = s.div_ceil(2);
        let r = step(s, s - 1, tid, payload_bytes);
        out.push((j.append(&r).unwrap(), r));
        if s % 2 == 0 {
            let c = commit(tid);
            out.push((j.append(&c).unwrap(), c));
        }
    }
    out
}

#[test]
fn round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written = {
        let (j, report) = Journal::open(dir.path(), ident(), small_segments(4096)).unwrap();
        assert_eq!(report.records, 0);
        assert_eq!(j.last_step(), 0);
        let w = fill(&j, 40, 300);
        assert_eq!(read_all(&j), w);
        assert_eq!(j.last_step(), 40);
        assert!(j.segments().1 > 1, "small segments roll");
        w
    };
    let (j, report) = Journal::open(dir.path(), ident(), small_segments(4096)).unwrap();
    assert_eq!(report.records, written.len() as u64);
    assert_eq!(report.torn_tail_bytes, 0);
    assert_eq!(report.last_step, 40);
    assert_eq!(read_all(&j), written);
    // Appends continue the chain after reopen.
    j.append(&step(41, 40, 21, 10)).unwrap();
    // read_from a middle position yields the suffix.
    let (mid, _) = written[17].clone();
    let suffix: Vec<_> = j.read_from(mid).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(suffix.len(), written.len() - 17 + 1);
    assert_eq!(suffix[0], written[17]);
}

#[test]
fn summarize_and_steps_of() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), small_segments(2048)).unwrap();
    fill(&j, 10, 100);
    j.append(&checkpoint(3)).unwrap();
    j.append(&step(11, 10, 6, 5)).unwrap(); // tid 6 is open
    let summary = j.summarize(2).unwrap();
    let tids: Vec<u64> = summary.tids.iter().map(|t| t.tid).collect();
    assert_eq!(tids, vec![3, 4, 5, 6]);
    let t3 = &summary.tids[0];
    assert_eq!((t3.first_step, t3.last_step, t3.steps, t3.committed), (5, 6, 2, true));
    let mut expect = Checksum::default();
    for s in [5u64, 6] {
        expect.merge(Checksum { count: 1 + s % 3, hash: s.wrapping_mul(0x9e37_79b9_7f4a_7c15) });
    }
    assert_eq!(summary.endpoints, ["in"]);
    assert_eq!(t3.sums, [(0, expect)]);
    assert_eq!(summary.aggregate(t3).get("in"), Some(expect));
    assert_eq!(summary.tid(5), Some(&summary.tids[2]));
    assert_eq!(summary.tid(2), None, "tids up to the one summarized after are left out");
    assert!(!summary.tids[3].committed);
    assert_eq!(summary.checkpoints, vec![(3, "checkpoints/3".to_string())]);
    assert_eq!(summary.last_step, 11);

    let steps: Vec<u64> = j.steps_of(4).unwrap().map(|r| r.unwrap().step).collect();
    assert_eq!(steps, vec![7, 8]);
    let mut n = 0;
    for r in j.steps_of(6).unwrap() {
        let s = r.unwrap();
        assert_eq!(s, match step(11, 10, 6, 5).kind { Some(Kind::Step(s)) => s, _ => unreachable!() });
        n += 1;
    }
    assert_eq!(n, 1);
    assert_eq!(j.steps_of(99).unwrap().count(), 0);

    // A run of tids through one reader: the same records, tid by tid,
    // nothing of the tids around it, and across segment boundaries.
    let run: Vec<(u64, u64)> = j.steps_of_run(3, 5).unwrap().map(|r| r.map(|s| (s.tid, s.step)).unwrap()).collect();
    let one_by_one: Vec<(u64, u64)> =
        (3..=5).flat_map(|t| j.steps_of(t).unwrap().map(|r| r.map(|s| (s.tid, s.step)).unwrap())).collect();
    assert_eq!(run, one_by_one);
    assert_eq!(run.first(), Some(&(3, 5)));
    assert_eq!(run.last().map(|(t, _)| *t), Some(5));
    assert_eq!(j.steps_of_run(90, 99).unwrap().count(), 0, "a run of tids with no steps is empty");
    let tail: Vec<u64> = j.steps_of_run(6, u64::MAX).unwrap().map(|r| r.unwrap().step).collect();
    assert_eq!(tail, vec![11], "a run to the last possible tid ends at the journal's end");
}

/// A step record naming `endpoints` `(name, count, hash)` in this order.
fn step_naming(step: u64, tid: u64, endpoints: &[(&str, u64, u64)]) -> pb::JournalRecord {
    let endpoints = endpoints
        .iter()
        .map(|(e, count, hash)| pb::EndpointInput {
            endpoint: e.to_string(),
            count: *count,
            hash: *hash,
            payload: Some(pb::endpoint_input::Payload::Value(vec![1])),
        })
        .collect();
    pb::JournalRecord { kind: Some(Kind::Step(pb::StepRecord { step, prev_step: step - 1, tid, epoch: 1, endpoints })) }
}

/// The summary names each endpoint once, sorted, whatever order steps name
/// them in; a tid's sums index that table in ascending order; commit
/// markers of tids without steps (also of a tid before the last one seen)
/// are tids of their own; only tids after `after_tid` contribute names.
#[test]
fn summary_endpoint_table_is_sorted_and_tids_index_it() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    j.append(&step_naming(1, 1, &[("zeta", 1, 1), ("alpha", 2, 2)])).unwrap();
    j.append(&step_naming(2, 1, &[("mid", 3, 3), ("zeta", 1, 10)])).unwrap();
    j.append(&commit(1)).unwrap();
    j.append(&checkpoint(1)).unwrap();
    j.append(&commit(3)).unwrap();
    j.append(&step_naming(3, 4, &[("alpha", 5, 5)])).unwrap();
    j.append(&commit(2)).unwrap();

    let s = j.summarize(0).unwrap();
    assert_eq!(s.endpoints, ["alpha", "mid", "zeta"]);
    let c = |count, hash| Checksum { count, hash };
    let rows: Vec<_> = s.tids.iter().map(|t| (t.tid, t.first_step, t.last_step, t.steps, t.committed, t.sums.clone())).collect();
    assert_eq!(rows, vec![
        (1, 1, 2, 2, true, vec![(0, c(2, 2)), (1, c(3, 3)), (2, c(2, 11))]),
        (2, 0, 0, 0, true, vec![]),
        (3, 0, 0, 0, true, vec![]),
        (4, 3, 3, 1, false, vec![(0, c(5, 5))]),
    ]);
    let t1: Vec<_> = s.sums(&s.tids[0]).collect();
    assert_eq!(t1, [("alpha", c(2, 2)), ("mid", c(3, 3)), ("zeta", c(2, 11))]);
    assert_eq!(s.aggregate(&s.tids[0]).get("zeta"), Some(c(2, 11)));
    assert!(s.aggregate(&s.tids[1]).0.is_empty());

    let after = j.summarize(1).unwrap();
    assert_eq!(after.endpoints, ["alpha"], "names only the summarized tids' endpoints");
    assert_eq!(after.tids.iter().map(|t| t.tid).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(after.tid(4).unwrap().sums, [(0, c(5, 5))]);
    assert_eq!(j.checkpoint_records().unwrap(), [(1, "checkpoints/1".to_string())]);
}

/// A reader of one tid (`steps_of`, `for_each_step`) reads from the tid's
/// first step up to the next tid's first step and no further: with the
/// commit pipeline's interleaving (a tid's commit marker after the next
/// tid's steps) and tids spread over segments it yields exactly the tid's
/// steps, and damage in a later tid's records is that tid's readers'
/// error only.
#[test]
fn a_tid_reader_reads_up_to_the_next_tid_only() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), small_segments(1024)).unwrap();
    let mut first_of = std::collections::BTreeMap::new();
    let mut s = 0;
    for tid in 1..=6u64 {
        for _ in 0..3 {
            s += 1;
            let at = j.append(&step(s, s - 1, tid, 150)).unwrap();
            first_of.entry(tid).or_insert(at);
        }
        if tid > 1 {
            j.append(&commit(tid - 1)).unwrap();
        }
    }
    assert!(j.segments().1 > 2, "tids spread over segments");
    let steps = |tid| -> Result<Vec<u64>, JournalError> { j.steps_of(tid)?.map(|r| r.map(|s| s.step)).collect() };
    for tid in 1..=6u64 {
        let want: Vec<u64> = (3 * tid - 2..=3 * tid).collect();
        assert_eq!(steps(tid).unwrap(), want, "tid {tid}");
        let mut seen = Vec::new();
        let n = j.for_each_step(tid, |v| -> Result<(), JournalError> {
            seen.push(v.step);
            Ok(())
        });
        assert_eq!((n.unwrap(), seen), (3, want));
    }
    // Damage tid 4's first step record (after open, so readers meet it).
    let victim = first_of[&4];
    let mut f = fs::OpenOptions::new().write(true).open(seg_path(dir.path(), victim.segment)).unwrap();
    f.seek(SeekFrom::Start(victim.offset + 8 + 4)).unwrap();
    f.write_all(&[0xA5]).unwrap();
    drop(f);
    assert_eq!(steps(3).unwrap(), [7, 8, 9], "tid 3's reader stops before tid 4's first step");
    assert!(matches!(steps(4), Err(JournalError::BadCrc { offset, .. }) if offset == victim.offset));
    assert!(matches!(j.for_each_step(4, |_| -> Result<(), JournalError> { Ok(()) }), Err(JournalError::BadCrc { .. })));
}

#[test]
fn append_async_and_concurrent_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), small_segments(64 << 10)).unwrap();
    let j = std::sync::Arc::new(j);
    let p = block_on(j.append_async(step(1, 0, 1, 10))).unwrap();
    assert_eq!(p.segment, 1);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || (0..50).map(|i| j.append(&commit(1000 + t * 100 + i)).unwrap()).collect::<Vec<_>>())
        })
        .collect();
    let mut positions: Vec<Position> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), 400);
    assert_eq!(read_all(&j).len(), 401);
}

/// A deferred record waits for the next append and is written before it,
/// in call order; `commit_queued` and closing the journal also commit it.
#[test]
fn deferred_records_are_durable_with_the_next_append_in_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = |j: &Journal| -> Vec<String> {
        read_all(j)
            .into_iter()
            .map(|(_, r)| match r.kind {
                Some(Kind::Step(s)) => format!("step {}", s.step),
                Some(Kind::Commit(c)) => format!("commit {}", c.tid),
                other => format!("{other:?}"),
            })
            .collect()
    };
    {
        let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
        j.append(&step(1, 0, 1, 10)).unwrap();
        let marker = j.append_deferred(commit(1));
        let next = j.append(&step(2, 1, 2, 10)).unwrap();
        let at = block_on(marker).unwrap();
        assert!(at < next, "the deferred record precedes the append after it: {at:?} vs {next:?}");
        assert_eq!(kinds(&j), ["step 1", "commit 1", "step 2"]);

        let marker = j.append_deferred(commit(2));
        j.commit_queued();
        block_on(marker).unwrap();
        assert_eq!(kinds(&j).last().map(String::as_str), Some("commit 2"));

        // Never awaited, never followed by an append: closing commits it.
        let _queued = j.append_deferred(commit(3));
    }
    let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    assert_eq!(kinds(&j), ["step 1", "commit 1", "step 2", "commit 2", "commit 3"]);
}

#[test]
fn append_rejects_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let opts = JournalOptions { record_bytes_max: 1000, ..JournalOptions::default() };
    let (j, _) = Journal::open(dir.path(), ident(), opts).unwrap();
    j.append(&step(1, 0, 1, 10)).unwrap();
    let err = j.append(&step(3, 2, 1, 10)).unwrap_err();
    assert!(matches!(err, JournalError::AppendOutOfOrder { step: 3, expected: 1, found: 2 }), "{err}");
    let err = j.append(&step(2, 1, 0, 10)).unwrap_err();
    assert!(matches!(err, JournalError::AppendInvalid { .. }), "{err}");
    let err = j.append(&step(2, 1, 1, 2000)).unwrap_err();
    assert!(matches!(err, JournalError::RecordTooLarge { .. }), "{err}");
    let err = j.append(&pb::JournalRecord { kind: None }).unwrap_err();
    assert!(matches!(err, JournalError::AppendInvalid { .. }), "{err}");
    // The journal is still fine.
    j.append(&step(2, 1, 1, 10)).unwrap();
    assert_eq!(j.last_step(), 2);
}

#[test]
fn first_step_of_a_new_journal_names_step_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    let err = j.append(&step(5, 4, 1, 1)).unwrap_err();
    assert!(matches!(err, JournalError::AppendOutOfOrder { expected: 0, .. }), "{err}");
}

/// A second opener of a journal directory in use (another host agent on
/// the same data directory) is refused, naming the directory and the
/// holder, before it reads anything; the first writer goes on unharmed,
/// and once it is closed the directory opens again.
#[test]
fn a_journal_in_use_is_refused_to_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    j.append(&step(1, 0, 1, 10)).unwrap();
    let err = Journal::open(dir.path(), ident(), JournalOptions::default()).err().expect("a second opener is refused");
    let msg = err.to_string();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    // Opened twice in this one process: it says so rather than blame
    // "another process".
    assert!(msg.contains(&format!("by this process (pid {})", std::process::id())), "names the holder: {msg}");
    assert!(msg.contains("--data-dir"), "{msg}");
    j.append(&step(2, 1, 1, 10)).unwrap();
    drop(j);
    let (j, report) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    assert_eq!((report.records, report.torn_tail_bytes, j.last_step()), (2, 0, 2), "nothing lost or cut");
}

#[test]
fn foreign_journal_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    drop(Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap());
    let other = JournalIdent { cluster_id: "cluster-a".into(), host_id: "host-7".into() };
    let err = Journal::open(dir.path(), other, JournalOptions::default()).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, JournalError::ForeignJournal { .. }));
    assert!(msg.contains("host-0") && msg.contains("host-7") && msg.contains("--data-dir"), "{msg}");
    assert!(msg.contains(&segment_file_name(1)), "{msg}");
}

#[test]
fn unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap());
    let path = seg_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let err = Journal::open(dir.path(), ident(), JournalOptions::default()).err().unwrap();
    assert!(matches!(err, JournalError::UnsupportedVersion { found: 7, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("version 7") && msg.contains("[1]") && msg.contains("offset 8"), "{msg}");
}

#[test]
fn missing_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(dir.path(), ident(), small_segments(1024)).unwrap();
        fill(&j, 20, 200);
        assert!(j.segments().1 >= 4);
    }
    fs::remove_file(seg_path(dir.path(), 2)).unwrap();
    let err = Journal::open(dir.path(), ident(), small_segments(1024)).err().unwrap();
    assert!(matches!(err, JournalError::MissingSegment { expected: 2, found: 3, .. }), "{err}");
}

#[test]
fn bad_crc_in_a_sealed_segment_is_a_hard_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(dir.path(), ident(), small_segments(1024)).unwrap();
        fill(&j, 20, 200);
    }
    let path = seg_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() - 5; // inside the last record of a sealed segment
    bytes[at] ^= 0x40;
    fs::write(&path, bytes).unwrap();
    let err = Journal::open(dir.path(), ident(), small_segments(1024)).err().unwrap();
    assert!(matches!(err, JournalError::BadCrc { .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[test]
fn corruption_followed_by_valid_records_in_last_segment_is_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let first_offset;
    {
        let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
        let w = fill(&j, 6, 50);
        first_offset = w[1].0.offset;
    }
    let path = seg_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[first_offset as usize + 10] ^= 1;
    fs::write(&path, bytes).unwrap();
    let err = Journal::open(dir.path(), ident(), JournalOptions::default()).err().unwrap();
    match &err {
        JournalError::BadCrc { offset, .. } => assert_eq!(*offset, first_offset),
        other => panic!("expected BadCrc, got {other}"),
    }
    assert!(err.to_string().contains("not a torn tail"), "{err}");
}

#[test]
fn torn_tail_is_truncated_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let written = {
        let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
        fill(&j, 5, 100)
    };
    let path = seg_path(dir.path(), 1);
    // Cut inside the last record (the file goes on with preallocated
    // zeros: cut them too, as a crash of a build without them would).
    let len = records_end(&written);
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
    let (j, report) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    let last_frame = written.last().unwrap().0.offset;
    assert_eq!(report.torn_tail_bytes, len - 3 - last_frame);
    assert_eq!(read_all(&j), written[..written.len() - 1]);
    // The journal continues after the cut.
    j.append(&commit(3)).unwrap();
    drop(j);
    let (j, report) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    assert_eq!(report.torn_tail_bytes, 0);
    assert_eq!(read_all(&j).len(), written.len());
}

/// The active segment is allocated ahead of its records (zeros after
/// them); reopening finds the records' end there without reporting a torn
/// tail, and appends continue at exactly that position, into the space
/// already allocated.
#[cfg(target_os = "linux")]
#[test]
fn active_segment_is_preallocated_and_reopen_resumes_at_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut written = {
        let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
        fill(&j, 10, 40)
    };
    let path = seg_path(dir.path(), 1);
    let end = records_end(&written);
    let bytes = fs::read(&path).unwrap();
    assert!(bytes.len() as u64 > end, "file {} bytes, records end at {end}: not preallocated", bytes.len());
    assert!(bytes[end as usize..].iter().all(|&b| b == 0), "preallocated space is zeros");

    let (j, report) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    assert_eq!((report.torn_tail_bytes, report.records, report.last_step), (0, written.len() as u64, 10));
    assert_eq!(read_all(&j), written);
    let r = step(11, 10, 6, 40);
    let at = j.append(&r).unwrap();
    assert_eq!(at, Position { segment: 1, offset: end }, "appends resume right after the last record");
    assert_eq!(fs::metadata(&path).unwrap().len(), bytes.len() as u64, "the append wrote into the allocated space");
    written.push((at, r));
    assert_eq!(read_all(&j), written);
    drop(j);
    reopen_whole(dir.path(), JournalOptions::default(), &written);
}

/// The header of segment `seq`.
fn header_of(dir: &Path, seq: u64) -> format::SegmentHeader {
    let path = seg_path(dir, seq);
    let len = fs::metadata(&path).unwrap().len();
    match format::read_header(&mut fs::File::open(&path).unwrap(), &path, len).unwrap() {
        format::HeaderRead::Ok(h) => h,
        torn => panic!("{}: {torn:?}", path.display()),
    }
}

/// A roll trims the full segment to exactly its records: its length is
/// what the next header records, and the journal reopens (and rolls on)
/// across many such segments.
#[test]
fn a_roll_leaves_the_sealed_segment_exactly_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments(4096);
    let check = |written: &[(Position, pb::JournalRecord)]| {
        let last = written.last().unwrap().0.segment;
        for seq in 1..last {
            let len = fs::metadata(seg_path(dir.path(), seq)).unwrap().len();
            let in_seq: Vec<_> = written.iter().filter(|(p, _)| p.segment == seq).cloned().collect();
            assert_eq!(len, records_end(&in_seq), "segment {seq} is its records and nothing else");
            assert_eq!(len, header_of(dir.path(), seq + 1).prev_segment_bytes, "segment {seq}");
        }
        last
    };
    let mut written = {
        let (j, _) = Journal::open(dir.path(), ident(), opts.clone()).unwrap();
        fill(&j, 60, 200)
    };
    let before = check(&written);
    assert!(before >= 4, "small segments roll: {before} segments");
    let j = reopen_whole(dir.path(), opts.clone(), &written);
    // Rolls after a reopen seal the segment the reopen resumed in too.
    for s in 61..=90 {
        let r = step(s, s - 1, 31 + s, 200);
        written.push((j.append(&r).unwrap(), r));
    }
    drop(j);
    assert!(check(&written) > before + 1);
    reopen_whole(dir.path(), opts, &written);
}

/// A record torn by a crash in preallocated space (its first bytes written,
/// the rest still the allocation's zeros) is a torn tail: cut with the
/// zeros after it and counted; the journal then appends where it was.
#[test]
fn a_torn_record_followed_by_zeros_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = {
        let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
        fill(&j, 5, 100)
    };
    let path = seg_path(dir.path(), 1);
    let (torn_at, end) = (written.last().unwrap().0.offset, records_end(&written));
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Keep the frame header and a few body bytes; zeros from there on. A
    // longer file: zeros after the records even without preallocation.
    let len = f.metadata().unwrap().len().max(end + 4096);
    f.set_len(torn_at + 12).unwrap();
    f.set_len(len).unwrap();
    drop(f);
    let (j, report) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    assert_eq!(report.torn_tail_bytes, len - torn_at, "the torn record and the zeros after it are cut");
    assert_eq!(report.records, written.len() as u64 - 1);
    assert_eq!(fs::metadata(&path).unwrap().len(), torn_at);
    assert_eq!(read_all(&j), written[..written.len() - 1]);
    let (_, last) = &written[written.len() - 1];
    assert_eq!(j.append(last).unwrap(), Position { segment: 1, offset: torn_at });
    j.append(&step(6, 5, 3, 100)).unwrap();
    drop(j);
    let (j, report) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    assert_eq!((report.torn_tail_bytes, report.records), (0, written.len() as u64 + 1));
    assert_eq!(read_all(&j)[..written.len()], written[..]);
}

/// Zeros in a sealed segment, even from a record boundary to its end
/// (what a zero tail of the last segment looks like), are damage: sealed
/// segments are trimmed to their records.
#[test]
fn zeros_in_a_sealed_segment_are_a_hard_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments(1024);
    let written = {
        let (j, _) = Journal::open(dir.path(), ident(), opts.clone()).unwrap();
        fill(&j, 20, 200)
    };
    let victim = written.iter().filter(|(p, _)| p.segment == 1).nth(1).expect("two records in segment 1").0;
    assert!(written.last().unwrap().0.segment > 2);
    let path = seg_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[victim.offset as usize..].fill(0);
    fs::write(&path, bytes).unwrap();
    let err = Journal::open(dir.path(), ident(), opts).err().unwrap();
    assert!(matches!(err, JournalError::BadLength { found: 0, offset, .. } if offset == victim.offset), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains(&format!("offset {}", victim.offset)), "{msg}");
    assert!(msg.contains("sealed segment") && msg.contains("hint"), "{msg}");
}

/// A journal written before preallocation (its last segment ends with its
/// last record) opens as it always did: no torn tail, appends continue
/// right after the last record.
#[test]
fn a_last_segment_without_zero_tail_opens_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments(2048);
    let mut written = {
        let (j, _) = Journal::open(dir.path(), ident(), opts.clone()).unwrap();
        fill(&j, 12, 150)
    };
    let last = written.last().unwrap().0.segment;
    assert!(last > 1);
    let in_last: Vec<_> = written.iter().filter(|(p, _)| p.segment == last).cloned().collect();
    let end = records_end(&in_last);
    let path = seg_path(dir.path(), last);
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(end).unwrap();
    let (j, report) = Journal::open(dir.path(), ident(), opts.clone()).unwrap();
    assert_eq!((report.torn_tail_bytes, report.records, report.last_step), (0, written.len() as u64, 12));
    assert_eq!(read_all(&j), written);
    let r = commit(6);
    let at = j.append(&r).unwrap();
    assert_eq!(at, Position { segment: last, offset: end });
    written.push((at, r));
    drop(j);
    reopen_whole(dir.path(), opts, &written);
}

#[test]
fn step_gap_on_disk_is_a_typed_error() {
    // Write a segment by hand (the writer refuses to create a gap).
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = format::encode_header(1, 0, 0, &ident());
    for r in [step(1, 0, 1, 4), step(2, 1, 1, 4), step(4, 3, 2, 4)] {
        bytes.extend(format::encode_frame(&r));
    }
    let gap_offset = bytes.len() - format::encode_frame(&step(4, 3, 2, 4)).len();
    fs::write(seg_path(dir.path(), 1), bytes).unwrap();
    let err = Journal::open(dir.path(), ident(), JournalOptions::default()).err().unwrap();
    match &err {
        JournalError::StepGap { offset, step: 4, expected: 2, found: 3, .. } => assert_eq!(*offset, gap_offset as u64),
        other => panic!("expected StepGap, got {other}"),
    }
}

#[test]
fn a_step_of_an_earlier_tid_on_disk_is_a_typed_error_not_skipped() {
    // By hand again: a step of tid 1 after tid 2 began. A reader of tid 2
    // must not pass over it silently; the chain check refuses it at open.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = format::encode_header(1, 0, 0, &ident());
    for r in [step(1, 0, 1, 4), step(2, 1, 2, 4), step(3, 2, 1, 4), step(4, 3, 2, 4)] {
        bytes.extend(format::encode_frame(&r));
    }
    fs::write(seg_path(dir.path(), 1), bytes).unwrap();
    let err = Journal::open(dir.path(), ident(), JournalOptions::default()).err().unwrap();
    match &err {
        JournalError::StepOrder { what: "tid went backwards", found, .. } => assert_eq!(found, "1"),
        other => panic!("expected StepOrder, got {other}"),
    }
}

#[test]
fn gc_deletes_whole_segments_before_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments(1024);
    let (j, _) = Journal::open(dir.path(), ident(), opts.clone()).unwrap();
    fill(&j, 30, 200);
    let cp = j.append(&checkpoint(15)).unwrap();
    for s in 31..=40 {
        j.append(&step(s, s - 1, 16 + s, 200)).unwrap();
    }
    let before = j.segments();
    assert!(matches!(j.gc_before_checkpoint(99), Err(JournalError::CheckpointNotFound { tid: 99 })));
    let deleted = j.gc_before_checkpoint(15).unwrap();
    assert_eq!(deleted as u64, cp.segment - before.0);
    assert_eq!(j.segments(), (cp.segment, before.1));
    assert!(!seg_path(dir.path(), 1).exists());
    // Idempotent.
    assert_eq!(j.gc_before_checkpoint(15).unwrap(), 0);
    let after: Vec<_> = read_all(&j);
    assert_eq!(after[0].0.segment, cp.segment);
    assert_eq!(j.steps_of(56).unwrap().count(), 1);
    let summary = j.summarize(0).unwrap();
    assert_eq!(summary.last_step, 40);
    drop(j);
    // Reopen: the sequence starts later; last_step survives even if GC
    // removed every step before the anchor.
    let (j, report) = Journal::open(dir.path(), ident(), opts).unwrap();
    assert_eq!(report.last_step, 40);
    assert_eq!(j.segments().0, cp.segment);
    j.append(&step(41, 40, 60, 1)).unwrap();
}

#[test]
fn crash_in_the_middle_of_gc_leaves_a_readable_journal() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments(1024);
    {
        let (j, _) = Journal::open(dir.path(), ident(), opts.clone()).unwrap();
        fill(&j, 30, 200);
        j.append(&checkpoint(15)).unwrap();
    }
    // As if GC deleted segment 1 and crashed before deleting 2.
    fs::remove_file(seg_path(dir.path(), 1)).unwrap();
    let (j, report) = Journal::open(dir.path(), ident(), opts).unwrap();
    assert_eq!(j.segments().0, 2);
    assert_eq!(report.last_step, 30);
    assert!(j.gc_before_checkpoint(15).unwrap() > 0);
    assert!(!read_all(&j).is_empty());
}

#[test]
fn stray_tmp_segment_is_removed_and_foreign_names_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap());
    fs::write(dir.path().join(format!("{}.tmp", segment_file_name(2))), b"LKST").unwrap();
    drop(Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap());
    assert!(!dir.path().join(format!("{}.tmp", segment_file_name(2))).exists());
    fs::write(dir.path().join("7.seg"), b"").unwrap();
    let err = Journal::open(dir.path(), ident(), JournalOptions::default()).err().unwrap();
    assert!(matches!(err, JournalError::BadSegmentName { .. }), "{err}");
}

/// A batch a killed process wrote but never synced sits in the page cache,
/// and the next open reads it as part of the journal. The open makes it
/// durable before any reader sees it. (Simulated with `pagecache::redirty`.)
#[test]
fn open_makes_what_the_page_cache_holds_of_the_last_segment_durable() {
    let dir = tempfile::tempdir().unwrap();
    let written = {
        let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
        fill(&j, 6, 100)
    };
    let Some(file) = lockstep_journal::pagecache::redirty(&seg_path(dir.path(), 1)).unwrap() else {
        return eprintln!("dirty pages cannot be seen here; skipping");
    };
    let _j = reopen_whole(dir.path(), JournalOptions::default(), &written);
    assert_eq!(lockstep_journal::pagecache::unwritten_pages(&file).unwrap(), Some(0), "all of the last segment is on disk once open");
}
