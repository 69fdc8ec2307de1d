//! Property tests: round trips of any append sequence, truncation at any
//! offset, and byte flips anywhere. The in-memory ones go through
//! `format::decode_segment`, the same scanner `Journal::open` uses, so they
//! can afford to try every offset.

mod common;

use std::fs;

use common::*;
use lockstep_journal::format::{self, segment_file_name};
use lockstep_journal::pb;
use lockstep_journal::{Journal, JournalError, Position};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Step { payload_bytes: usize, next_tid: bool },
    Commit,
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..400, any::<bool>()).prop_map(|(payload_bytes, next_tid)| Op::Step { payload_bytes, next_tid }),
        1 => Just(Op::Commit),
        1 => Just(Op::Checkpoint),
    ]
}

/// The records a sequence of ops produces (a valid step chain).
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

fn read_all(j: &Journal) -> Vec<(Position, pb::JournalRecord)> {
    j.read_from(Position::default()).unwrap().collect::<Result<Vec<_>, _>>().unwrap()
}

/// One segment in memory with the given records; returns the bytes and the
/// end offset of each frame.
fn segment(recs: &[pb::JournalRecord]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = format::encode_header(1, 0, 0, &ident());
    let mut ends = Vec::new();
    for r in recs {
        bytes.extend(format::encode_frame(r));
        ends.push(bytes.len());
    }
    (bytes, ends)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_appends_read_back_identically(ops in prop::collection::vec(op(), 0..40), segment_bytes_max in 200u64..3000) {
        let dir = tempfile::tempdir().unwrap();
        let opts = small_segments(segment_bytes_max);
        let recs = records(&ops);
        let written: Vec<(Position, pb::JournalRecord)> = {
            let (j, _) = Journal::open(dir.path(), ident(), opts.clone()).unwrap();
            let w: Vec<_> = recs.iter().map(|r| (j.append(r).unwrap(), r.clone())).collect();
            prop_assert_eq!(&read_all(&j), &w);
            w
        };
        let (j, report) = Journal::open(dir.path(), ident(), opts).unwrap();
        prop_assert_eq!(report.records, recs.len() as u64);
        prop_assert_eq!(report.torn_tail_bytes, 0);
        prop_assert_eq!(read_all(&j), written);
    }

    /// Cutting a file of a multi-segment journal anywhere: the last
    /// segment gives back a prefix, any other segment a precise error.
    #[test]
    fn truncated_files_give_a_prefix_or_an_error(ops in prop::collection::vec(op(), 1..30), cut_at in any::<prop::sample::Index>(), which in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let opts = small_segments(600);
        let recs = records(&ops);
        let (written, (first, last)) = {
            let (j, _) = Journal::open(dir.path(), ident(), opts.clone()).unwrap();
            let w: Vec<_> = recs.iter().map(|r| (j.append(r).unwrap(), r.clone())).collect();
            (w, j.segments())
        };
        let seq = first + which.index((last - first + 1) as usize) as u64;
        let path = dir.path().join(segment_file_name(seq));
        let len = fs::metadata(&path).unwrap().len();
        let cut = cut_at.index(len as usize) as u64; // < len: always cuts something
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
        let left = fs::read(&path).unwrap();
        match Journal::open(dir.path(), ident(), opts) {
            Ok((j, report)) => {
                prop_assert_eq!(seq, last, "only the last segment may lose its tail");
                let got = read_all(&j);
                let expected: Vec<_> = written.iter().filter(|(p, r)| {
                    p.segment < seq || p.offset + format::encode_frame(r).len() as u64 <= cut
                }).cloned().collect();
                prop_assert_eq!(got, expected);
                // Torn unless the bytes after the last whole record are all
                // zeros (a cut at a record boundary or among the
                // preallocated zeros after the records).
                let header_end = format::encode_header(seq, 0, 0, &ident()).len() as u64;
                let torn = if cut < header_end {
                    cut > 0
                } else {
                    let valid_end = written
                        .iter()
                        .filter(|(p, _)| p.segment == seq)
                        .map(|(p, r)| p.offset + format::encode_frame(r).len() as u64)
                        .filter(|&end| end <= cut)
                        .fold(header_end, u64::max);
                    !left[valid_end as usize..].iter().all(|&b| b == 0)
                };
                prop_assert_eq!(report.torn_tail_bytes > 0, torn, "cut at {} of {}", cut, len);
            }
            Err(e) => {
                prop_assert!(seq < last, "the last segment's tail is repaired, got {}", e);
                let msg = e.to_string();
                prop_assert!(msg.contains(&segment_file_name(seq)) || msg.contains("segment"), "{}", msg);
            }
        }
    }
}

/// Every cut of one segment decodes to the prefix of whole records.
#[test]
fn every_truncation_of_a_segment_yields_the_prefix() {
    let recs = records(&[
        Op::Step { payload_bytes: 30, next_tid: false },
        Op::Commit,
        Op::Step { payload_bytes: 0, next_tid: true },
        Op::Checkpoint,
        Op::Step { payload_bytes: 120, next_tid: false },
    ]);
    let (bytes, ends) = segment(&recs);
    for cut in 0..=bytes.len() {
        let decoded = format::decode_segment(&bytes[..cut]).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let got: Vec<_> = decoded.records.into_iter().map(|(_, r)| r).collect();
        assert_eq!(got, recs[..whole], "cut at {cut}");
        let header_end = ends[0] - format::encode_frame(&recs[0]).len();
        if decoded.header.is_some() {
            let valid_end = if whole == 0 { header_end } else { ends[whole - 1] };
            assert_eq!(decoded.torn_tail_bytes, (cut - valid_end) as u64, "cut at {cut}");
        } else {
            assert!(cut < header_end, "cut at {cut}: a whole header was not decoded");
            assert_eq!(decoded.torn_tail_bytes, cut as u64);
        }
    }
}

/// Zeros after the last record (preallocated space, of any length, also
/// shorter than a frame header) are the end of the records, not a torn
/// tail; a partial record before them still is one.
#[test]
fn a_zero_tail_ends_the_records() {
    let recs = records(&[Op::Step { payload_bytes: 30, next_tid: false }, Op::Commit, Op::Checkpoint]);
    let (bytes, ends) = segment(&recs);
    for zeros in [1usize, 7, 8, 9, 4096, 1 << 20] {
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + zeros, 0);
        let d = format::decode_segment(&padded).unwrap_or_else(|e| panic!("{zeros} zeros: {e}"));
        assert_eq!(d.records.into_iter().map(|(_, r)| r).collect::<Vec<_>>(), recs, "{zeros} zeros");
        assert_eq!(d.torn_tail_bytes, 0, "{zeros} zeros");
        // The last record torn after its frame header: torn, zeros and all.
        let mut torn = bytes[..ends[1] + format::FRAME_HEADER_BYTES].to_vec();
        torn.resize(bytes.len() + zeros, 0);
        let d = format::decode_segment(&torn).unwrap_or_else(|e| panic!("{zeros} zeros: {e}"));
        assert_eq!(d.records.into_iter().map(|(_, r)| r).collect::<Vec<_>>(), recs[..2], "{zeros} zeros");
        assert_eq!(d.torn_tail_bytes, (torn.len() - ends[1]) as u64, "{zeros} zeros");
    }
    // A header followed by nothing but zeros: no records, nothing torn.
    let mut empty = format::encode_header(1, 0, 0, &ident());
    empty.resize(empty.len() + 100, 0);
    let d = format::decode_segment(&empty).unwrap();
    assert!(d.header.is_some() && d.records.is_empty() && d.torn_tail_bytes == 0, "{d:?}");
}

/// Flipping any single byte never yields altered records: the result is an
/// error, or the records before the damaged one when the damage is in the
/// last record (a torn tail).
#[test]
fn every_byte_flip_is_detected() {
    let recs = records(&[
        Op::Step { payload_bytes: 20, next_tid: false },
        Op::Commit,
        Op::Step { payload_bytes: 3, next_tid: true },
        Op::Checkpoint,
        Op::Step { payload_bytes: 40, next_tid: false },
    ]);
    let (bytes, ends) = segment(&recs);
    let last_start = ends[ends.len() - 2];
    for at in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[at] ^= mask;
            match format::decode_segment(&damaged) {
                Err(_) => {}
                Ok(d) => {
                    let got: Vec<_> = d.records.into_iter().map(|(_, r)| r).collect();
                    assert!(at >= last_start, "flip at {at} (mask {mask:#x}) in a middle record was not detected");
                    assert_eq!(got, recs[..recs.len() - 1], "flip at {at}");
                    assert!(d.torn_tail_bytes > 0);
                }
            }
        }
    }
}

/// The same as the fuzz targets, bounded, so `cargo test` exercises the
/// decoders with random bytes (and with random damage to a real segment).
#[test]
fn decoders_never_panic_on_random_bytes() {
    let recs = records(&[Op::Step { payload_bytes: 64, next_tid: false }, Op::Commit, Op::Checkpoint]);
    let (valid, _) = segment(&recs);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 2000, ..ProptestConfig::default() });
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<bool>(),
        prop_oneof![Just(0usize), 1usize..40],
    );
    runner
        .run(&strategy, |(random, edits, use_valid, zeros)| {
            let mut bytes = if use_valid { valid.clone() } else { random.clone() };
            // A zero tail, as preallocation leaves after the records.
            bytes.resize(bytes.len() + zeros, 0);
            for (i, b) in edits {
                if !bytes.is_empty() {
                    let i = i.index(bytes.len());
                    bytes[i] = b;
                }
            }
            let _ = format::decode_segment(&bytes);
            let _ = format::decode_record(&random);
            let _ = format::decode_light(&random);
            let in_place = lockstep_journal::view::decode_view(&random).map(|v| v.to_pb());
            prop_assert_eq!(in_place, format::decode_record(&random));
            Ok(())
        })
        .unwrap();
}

#[test]
fn error_names_file_offset_and_expected_vs_found() {
    let recs = records(&[Op::Step { payload_bytes: 10, next_tid: false }, Op::Commit]);
    let (mut bytes, ends) = segment(&recs);
    bytes[ends[0] - 1] ^= 0x10;
    let err = format::decode_segment(&bytes).unwrap_err();
    let msg = err.to_string();
    let first = ends[0] - format::encode_frame(&recs[0]).len();
    assert!(matches!(err, JournalError::BadCrc { .. }));
    assert!(msg.contains("<memory>") && msg.contains(&format!("offset {first}")) && msg.contains("stored") && msg.contains("computed"), "{msg}");
}
