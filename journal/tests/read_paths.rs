//! The chunked in-place frame reader and the two record iterators built on
//! it: `read_from` (owned `pb` records) and `read_shared_from` (payloads
//! shared with the read buffer) must give identical records, positions and
//! errors — on random journals, from any start position, across segment
//! and read-chunk boundaries (records larger than a chunk), after a torn
//! tail, and on corruption. Also: blocking (leader) and async appenders
//! mixed.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use common::*;
use lockstep_journal::format::{self, segment_file_name, READ_CHUNK_BYTES};
use lockstep_journal::{pb, view, Journal, JournalError, JournalOptions, Position};
use proptest::prelude::*;

type Read = Result<Vec<(Position, pb::JournalRecord)>, String>;

/// Both iterators from `from`: everything up to the first error, and the
/// error (as text: it names file, offset and what was found).
/// Records read before the first error, and that error as text.
type Partial = (Vec<(Position, pb::JournalRecord)>, Option<String>);

fn both(j: &Journal, from: Position) -> (Partial, Partial) {
    let mut owned = Vec::new();
    let mut owned_err = None;
    for r in j.read_from(from).unwrap() {
        match r {
            Ok(x) => owned.push(x),
            Err(e) => owned_err = Some(e.to_string()),
        }
    }
    let mut shared = Vec::new();
    let mut shared_err = None;
    for r in j.read_shared_from(from).unwrap() {
        match r {
            Ok((pos, rec)) => shared.push((pos, pb::JournalRecord::from(rec))),
            Err(e) => shared_err = Some(e.to_string()),
        }
    }
    // The in-place path (views_from) must agree with read_from exactly.
    let mut views = Vec::new();
    let mut views_err = None;
    let mut reader = j.views_from(from).unwrap();
    loop {
        match reader.next_record() {
            Ok(Some((pos, rec))) => views.push((pos, rec.to_pb())),
            Ok(None) => break,
            Err(e) => views_err = Some(e.to_string()),
        }
    }
    assert_eq!(owned, views, "read_from and views_from disagree from {from:?}");
    assert_eq!(owned_err, views_err, "read_from and views_from report different errors from {from:?}");
    ((owned, owned_err), (shared, shared_err))
}

fn assert_same(j: &Journal, from: Position) -> Read {
    let ((owned, owned_err), (shared, shared_err)) = both(j, from);
    assert_eq!(owned, shared, "read_from and read_shared_from disagree from {from:?}");
    assert_eq!(owned_err, shared_err, "read_from and read_shared_from report different errors from {from:?}");
    match owned_err {
        Some(e) => Err(e),
        None => Ok(owned),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Step { payload_bytes: usize, next_tid: bool },
    Commit,
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..600, any::<bool>()).prop_map(|(payload_bytes, next_tid)| Op::Step { payload_bytes, next_tid }),
        // Larger than a read chunk: the frame spans several fills.
        1 => (READ_CHUNK_BYTES - 64..READ_CHUNK_BYTES + 70_000, any::<bool>()).prop_map(|(payload_bytes, next_tid)| Op::Step { payload_bytes, next_tid }),
        1 => Just(Op::Commit),
        1 => Just(Op::Checkpoint),
    ]
}

fn records(ops: &[Op]) -> Vec<pb::JournalRecord> {
    let (mut last_step, mut tid) = (0u64, 1u64);
    ops.iter()
        .map(|op| match op {
            Op::Step { payload_bytes, next_tid } => {
                tid += *next_tid as u64;
                last_step += 1;
                step(last_step, last_step - 1, tid, *payload_bytes)
            }
            Op::Commit => commit(tid),
            Op::Checkpoint => checkpoint(tid),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// Random journals (many small records per read chunk, some records
    /// bigger than a chunk, several segments): both iterators give exactly
    /// what was appended, from the start and from every record position;
    /// the summary and steps_of agree with them.
    #[test]
    fn both_read_paths_agree_on_random_journals(ops in prop::collection::vec(op(), 1..120), segment_kib in 4u64..1200) {
        let dir = tempfile::tempdir().unwrap();
        let recs = records(&ops);
        let (j, _) = Journal::open(dir.path(), ident(), small_segments(segment_kib << 10)).unwrap();
        let positions: Vec<Position> = recs.iter().map(|r| j.append(r).unwrap()).collect();
        let all = assert_same(&j, Position::default()).unwrap();
        prop_assert_eq!(all.iter().map(|(p, _)| *p).collect::<Vec<_>>(), positions.clone());
        prop_assert_eq!(all.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), recs.clone());
        for (i, pos) in positions.iter().enumerate().step_by(7) {
            let tail = assert_same(&j, *pos).unwrap();
            prop_assert_eq!(tail.len(), recs.len() - i);
        }
        // summarize / steps_of (light decode in place) match the records.
        let summary = j.summarize(0).unwrap();
        for t in &summary.tids {
            let steps: Vec<pb::StepRecord> = j.steps_of(t.tid).unwrap().collect::<Result<_, _>>().unwrap();
            let expected: Vec<pb::StepRecord> = recs.iter().filter_map(|r| match &r.kind {
                Some(pb::journal_record::Kind::Step(s)) if s.tid == t.tid => Some(s.clone()),
                _ => None,
            }).collect();
            prop_assert_eq!(steps.len() as u64, t.steps);
            let mut in_place = Vec::new();
            let n = j.for_each_step(t.tid, |s| -> Result<(), JournalError> {
                in_place.push(s.to_pb());
                Ok(())
            }).unwrap();
            prop_assert_eq!(n, t.steps);
            prop_assert_eq!(&in_place, &steps);
            prop_assert_eq!(steps, expected);
        }
        // Reopen (the open-time scan uses the same frame reader).
        drop(j);
        let (j, report) = Journal::open(dir.path(), ident(), small_segments(segment_kib << 10)).unwrap();
        prop_assert_eq!(report.records, recs.len() as u64);
        prop_assert_eq!(report.torn_tail_bytes, 0);
        prop_assert_eq!(assert_same(&j, Position::default()).unwrap(), all);
    }

        /// Random journals whose steps name random endpoints in random order,
    /// and commit markers of random tids: the summary equals one computed
    /// naively from the records (a map per tid), its endpoint table is
    /// sorted and names exactly the summarized tids' endpoints, and every
    /// tid's sums index it in ascending order.
    #[test]
    fn summary_matches_the_records(
        ops in prop::collection::vec((any::<bool>(), prop::collection::vec((0usize..5, 0u64..4), 0..5), any::<bool>(), 0u64..12), 1..80),
        after_tid in 0u64..6,
    ) {
        use std::collections::{BTreeMap, BTreeSet};
        const NAMES: [&str; 5] = ["push", "gen", "b", "zz", "a"];
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
        // tid -> (first, last, steps, endpoint -> (count, hash), committed)
        type Naive = (u64, u64, u64, BTreeMap<String, (u64, u64)>, bool);
        let mut naive: BTreeMap<u64, Naive> = BTreeMap::new();
        let (mut tid, mut last_step) = (1u64, 0u64);
        for (next_tid, endpoints, is_commit, commit_tid) in ops {
            if is_commit {
                j.append(&commit(commit_tid)).unwrap();
                naive.entry(commit_tid).or_default().4 = true;
                continue;
            }
            tid += next_tid as u64;
            last_step += 1;
            let mut seen = BTreeSet::new();
            let endpoints: Vec<pb::EndpointInput> = endpoints
                .into_iter()
                .filter(|(n, _)| seen.insert(*n))
                .map(|(n, count)| pb::EndpointInput {
                    endpoint: NAMES[n].into(),
                    count,
                    hash: last_step * 1000 + n as u64,
                    payload: Some(pb::endpoint_input::Payload::Value(vec![])),
                })
                .collect();
            let t = naive.entry(tid).or_default();
            if t.2 == 0 {
                t.0 = last_step;
            }
            t.1 = last_step;
            t.2 += 1;
            for e in &endpoints {
                let sum = t.3.entry(e.endpoint.clone()).or_default();
                *sum = (sum.0.wrapping_add(e.count), sum.1.wrapping_add(e.hash));
            }
            let kind = pb::journal_record::Kind::Step(pb::StepRecord { step: last_step, prev_step: last_step - 1, tid, epoch: 1, endpoints });
            j.append(&pb::JournalRecord { kind: Some(kind) }).unwrap();
        }
        let naive: Vec<_> = naive.into_iter().filter(|(t, _)| *t > after_tid).collect();
        let names: BTreeSet<&String> = naive.iter().flat_map(|(_, t)| t.3.keys()).collect();
        let s = j.summarize(after_tid).unwrap();
        prop_assert_eq!(s.endpoints.iter().collect::<BTreeSet<_>>(), names);
        prop_assert!(s.endpoints.windows(2).all(|w| w[0] < w[1]), "sorted, each once: {:?}", s.endpoints);
        prop_assert!(s.tids.iter().all(|t| t.sums.windows(2).all(|w| w[0].0 < w[1].0)));
        let got: Vec<_> = s
            .tids
            .iter()
            .map(|t| {
                let sums: BTreeMap<String, (u64, u64)> = s.sums(t).map(|(e, c)| (e.to_string(), (c.count, c.hash))).collect();
                (t.tid, (t.first_step, t.last_step, t.steps, sums, t.committed))
            })
            .collect();
        prop_assert_eq!(got, naive);
    }

    /// A torn tail cut anywhere in the last segment (its records or the
    /// preallocated zeros after them): after reopen both iterators give the
    /// same prefix.
    #[test]
    fn torn_tail_gives_the_same_prefix_on_both_paths(ops in prop::collection::vec(op(), 1..40), cut in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let recs = records(&ops);
        let positions: Vec<Position> = {
            let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
            recs.iter().map(|r| j.append(r).unwrap()).collect()
        };
        let path = dir.path().join(segment_file_name(1));
        let len = fs::metadata(&path).unwrap().len();
        let header = format::encode_header(1, 0, 0, &ident()).len() as u64;
        let cut_at = header + cut.index((len - header) as usize) as u64;
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut_at).unwrap();
        let (j, report) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
        let records_end = positions.last().unwrap().offset + format::encode_frame(recs.last().unwrap()).len() as u64;
        let kept = positions.iter().filter(|p| p.offset < cut_at).count();
        let full = positions.get(kept).map_or(records_end, |p| p.offset) <= cut_at || kept == 0 && cut_at == header;
        let kept = if full { kept } else { kept - 1 };
        let got = assert_same(&j, Position::default()).unwrap();
        prop_assert_eq!(got.len(), kept);
        prop_assert_eq!(report.records, kept as u64);
        prop_assert_eq!(got.into_iter().map(|(_, r)| r).collect::<Vec<_>>(), recs[..kept].to_vec());
    }
}

/// Corruption that appears after open (so the reader, not open, meets it):
/// both iterators yield the records before it, then the same BadCrc error
/// naming the same file and offset; a damaged length prefix likewise.
#[test]
fn corruption_is_detected_identically_by_both_paths() {
    for (payload, flip_in) in [(100usize, "body"), (READ_CHUNK_BYTES + 10, "body"), (100, "length")] {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
        let positions: Vec<Position> = (1..=20u64).map(|s| j.append(&step(s, s - 1, 1, payload)).unwrap()).collect();
        let victim = positions[13];
        let at = victim.offset + if flip_in == "body" { 8 + 20 } else { 1 };
        let path = dir.path().join(segment_file_name(victim.segment));
        let mut f = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[0xA5]).unwrap();
        drop(f);
        let ((owned, owned_err), (shared, shared_err)) = both(&j, Position::default());
        assert_eq!(owned, shared);
        assert_eq!(owned.len(), 13, "{flip_in}, payload {payload}");
        let err = owned_err.expect("corruption detected");
        assert_eq!(Some(err.clone()), shared_err);
        assert!(err.contains(&victim.offset.to_string()) && err.contains(&path.display().to_string()), "{err}");
        // The typed error is the same too.
        let e = j.read_shared_from(Position::default()).unwrap().find_map(|r| r.err()).unwrap();
        match flip_in {
            "body" => assert!(matches!(e, JournalError::BadCrc { offset, .. } if offset == victim.offset), "{e:?}"),
            _ => assert!(matches!(e, JournalError::BadCrc { .. } | JournalError::BadLength { .. } | JournalError::Truncated { .. }), "{e:?}"),
        }
    }
}

/// A reader that opened the active segment before a roll (which trims the
/// preallocated zeros off it and starts the next segment) reads on to the
/// durable end it started with, on every read path, and never into the
/// zeros; summaries and fresh readers after the roll see everything.
#[test]
fn readers_of_the_active_segment_survive_a_roll() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), small_segments(8 << 10)).unwrap();
    let mut written: Vec<(Position, pb::JournalRecord)> = (1..=10u64)
        .map(|s| {
            let r = step(s, s - 1, s, 300);
            (j.append(&r).unwrap(), r)
        })
        .collect();
    assert_eq!(j.segments(), (1, 1));
    let mut owned = j.read_from(Position::default()).unwrap();
    let mut shared = j.read_shared_from(Position::default()).unwrap();
    let mut views = j.views_from(Position::default()).unwrap();
    // Each has opened segment 1 (and read a chunk of it).
    assert_eq!(owned.next().unwrap().unwrap(), written[0]);
    assert_eq!(pb::JournalRecord::from(shared.next().unwrap().unwrap().1), written[0].1);
    assert_eq!(views.next_record().unwrap().unwrap().1.to_pb(), written[0].1);
    let before = written.len();
    for s in 11..=40u64 {
        let r = step(s, s - 1, s, 300);
        written.push((j.append(&r).unwrap(), r));
    }
    assert!(j.segments().1 > 1, "rolled: {:?}", j.segments());
    let rest: Vec<_> = owned.map(|r| r.unwrap()).collect();
    assert_eq!(rest, written[1..before]);
    let rest: Vec<_> = shared.map(|r| pb::JournalRecord::from(r.unwrap().1)).collect();
    assert_eq!(rest, written[1..before].iter().map(|(_, r)| r.clone()).collect::<Vec<_>>());
    let mut rest = Vec::new();
    while let Some((pos, r)) = views.next_record().unwrap() {
        rest.push((pos, r.to_pb()));
    }
    assert_eq!(rest, written[1..before]);
    assert_eq!(assert_same(&j, Position::default()).unwrap(), written);
    let summary = j.summarize(0).unwrap();
    assert_eq!((summary.tids.len(), summary.last_step), (40, 40));
}

/// Shared payloads are slices of the read buffer (no copy) and stay valid
/// after the iterator moved on or was dropped.
#[test]
fn shared_payloads_outlive_the_iterator() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    for s in 1..=50u64 {
        j.append(&step(s, s - 1, 1, 3000)).unwrap();
    }
    let held: Vec<view::JournalRecord> = j.read_shared_from(Position::default()).unwrap().map(|r| r.unwrap().1).collect();
    let owned: Vec<pb::JournalRecord> = j.read_from(Position::default()).unwrap().map(|r| r.unwrap().1).collect();
    assert_eq!(held.into_iter().map(pb::JournalRecord::from).collect::<Vec<_>>(), owned);
}

/// The read buffer is reused for the next chunk only when no shared body
/// still points into it: bodies that are kept stay intact while later
/// chunks are read (some held, most dropped, over many 256 KiB chunks,
/// including records longer than a chunk), and every record read is right.
#[test]
fn held_shared_bodies_survive_read_buffer_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), JournalOptions::default()).unwrap();
    let size = |s: u64| if s.is_multiple_of(50) { 300 << 10 } else { 1000 + (s as usize * 37) % 3000 };
    let n = 700u64;
    for s in 1..=n {
        j.append(&step(s, s - 1, 1, size(s))).unwrap();
    }
    let mut held = Vec::new();
    let mut count = 0u64;
    for r in j.read_shared_from(Position::default()).unwrap() {
        let (_, rec) = r.unwrap();
        count += 1;
        let s = count;
        assert_eq!(pb::JournalRecord::from(rec.clone()), step(s, s - 1, 1, size(s)), "record {s} as read");
        if s.is_multiple_of(97) || s.is_multiple_of(50) {
            held.push((s, rec));
        }
    }
    assert_eq!(count, n);
    for (s, rec) in held {
        assert_eq!(pb::JournalRecord::from(rec), step(s, s - 1, 1, size(s)), "held record {s}");
    }
}

/// Blocking appenders (which commit on their own thread when no commit is
/// in progress) and async appenders (committed by the commit thread) mixed:
/// every append is acknowledged once, positions are distinct and in journal
/// order, and everything reads back.
#[test]
fn blocking_leaders_and_async_appenders_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), ident(), small_segments(16 << 10)).unwrap();
    let j = Arc::new(j);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                (0..150u64)
                    .map(|i| {
                        let tid = t * 1000 + i + 1;
                        if t % 2 == 0 {
                            (j.append(&commit(tid)).unwrap(), tid)
                        } else {
                            (block_on(j.append_async(commit(tid))).unwrap(), tid)
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(Position, u64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    acked.sort();
    let read = assert_same(&j, Position::default()).unwrap();
    assert_eq!(read.len(), acked.len());
    for ((pos, rec), (apos, tid)) in read.iter().zip(&acked) {
        assert_eq!(pos, apos);
        assert_eq!(rec, &commit(*tid));
    }
    // Dropping with async appends still queued commits them first.
    let futs: Vec<_> = (0..100u64).map(|i| j.append_async(commit(100_000 + i))).collect();
    drop(Arc::try_unwrap(j).ok().expect("last handle"));
    for f in futs {
        block_on(f).unwrap();
    }
    let (j, report) = Journal::open(dir.path(), ident(), small_segments(16 << 10)).unwrap();
    assert_eq!(report.records, acked.len() as u64 + 100);
    drop(j);
}
