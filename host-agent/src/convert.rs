//! Conversions between the wire/journal protobuf types and the host agent's
//! domain types, all in one place. Decoding is total: a malformed command
//! becomes an error string (the core turns it into a protocol error), never
//! a panic.

use crate::core::{Command, Mode, Report};
use crate::engine::{EndpointInput, GeneratorRef, Payload, StepInput};
use lockstep_journal::{pb, Checksum, EndpointChecksums, JournalSummary};
use lockstep_proto::{columns, v1};

/// Decodes a command body; `Err` names what is missing or unknown.
pub fn command_from_proto(cmd: Option<v1::command::Command>) -> Result<Command, String> {
    use v1::command::Command as C;
    Ok(match cmd.ok_or("the command has no body (empty oneof)")? {
        C::Welcome(w) => Command::Welcome { coordinator_id: w.coordinator_id },
        C::Start(s) => Command::Start { tid: s.tid, mode: mode_from_proto(s.mode)?, prepare: s.prepare },
        C::Prepare(p) => Command::Prepare {
            tid: p.tid,
            next: match p.next {
                Some(s) => Some((s.tid, mode_from_proto(s.mode)?, s.prepare)),
                None => None,
            },
        },
        C::Commit(c) => Command::Commit {
            tid: c.tid,
            next: match c.next {
                Some(s) => Some((s.tid, mode_from_proto(s.mode)?, s.prepare)),
                None => None,
            },
        },
        C::Checkpoint(c) => Command::Checkpoint { tid: c.tid },
        C::CheckpointComplete(c) => Command::CheckpointComplete { tid: c.tid },
        C::Restore(r) => Command::Restore { checkpoint_tid: r.checkpoint_tid },
        C::Stop(s) => Command::Stop { reason: s.reason },
    })
}

fn mode_from_proto(mode: i32) -> Result<Mode, String> {
    match v1::TxnMode::try_from(mode) {
        Ok(v1::TxnMode::Live) => Ok(Mode::Live),
        Ok(v1::TxnMode::Replay) => Ok(Mode::Replay),
        Ok(v1::TxnMode::Unspecified) => Err("transaction mode is TXN_MODE_UNSPECIFIED".into()),
        Err(_) => Err(format!("unknown transaction mode {mode}")),
    }
}

pub fn mode_to_proto(mode: Mode) -> v1::TxnMode {
    match mode {
        Mode::Live => v1::TxnMode::Live,
        Mode::Replay => v1::TxnMode::Replay,
    }
}

pub fn checksums_to_proto(c: &EndpointChecksums) -> Vec<v1::EndpointChecksum> {
    c.0.iter()
        .map(|(endpoint, c)| v1::EndpointChecksum { endpoint: endpoint.clone(), count: c.count, hash: c.hash })
        .collect()
}

/// A core report on the wire (the seq is added by the sender).
pub fn report_to_proto(report: Report) -> v1::host_report::Report {
    use v1::host_report::Report as R;
    match report {
        Report::StepDone { tid, step, checksums, journaled, mode } => R::StepDone(v1::StepDone {
            tid,
            step,
            checksums: checksums_to_proto(&checksums),
            journaled: journaled.as_ref().map(checksums_to_proto).unwrap_or_default(),
            state: match mode {
                Mode::Live => v1::HostTxnState::OpenLive,
                Mode::Replay => v1::HostTxnState::OpenReplay,
            } as i32,
            mode: mode_to_proto(mode) as i32,
        }),
        Report::Committed { tid } => R::Committed(v1::Committed { tid }),
        Report::CheckpointDone { tid } => R::CheckpointDone(v1::CheckpointDone { tid }),
        Report::Restored { checkpoint_tid } => R::Restored(v1::Restored { checkpoint_tid }),
        Report::Error { kind, tid, message } => {
            R::Error(v1::HostError { kind: kind.as_str().to_string(), message, tid })
        }
    }
}

/// The endpoint table of a new `ReplayedTids` whose first entry is a step
/// with these sides: both sides' endpoints, sorted.
pub fn step_table(checksums: &EndpointChecksums, journaled: &EndpointChecksums) -> Vec<String> {
    if journaled == checksums {
        checksums.0.keys().cloned().collect()
    } else {
        checksums.0.keys().chain(journaled.0.keys()).cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect()
    }
}

/// A new `ReplayedTid` entry for `tid`, with no step yet.
pub fn replayed_tid(tid: u64) -> v1::ReplayedTid {
    v1::ReplayedTid { tid, journaled_as_replayed: true, ..Default::default() }
}

/// Appends a replayed step's report to `t`, an entry of a `ReplayedTids`
/// whose endpoint table is `table` (sorted); the entry stands for
/// `StepDone{.., state: OpenReplay, mode: Replay}` per step. Returns
/// `false`, and changes nothing, when the step names an endpoint the table
/// lacks: the caller then starts another report.
///
/// While every step of the entry journaled exactly what it ingested, the
/// journaled side is not written at all (`journaled_as_replayed`); the
/// first step that differs writes out the rows before it (equal to the
/// replayed ones) and both sides are written from then on.
pub fn push_replayed_step(table: &[String], t: &mut v1::ReplayedTid, step: u64, checksums: &EndpointChecksums, journaled: &EndpointChecksums) -> bool {
    let same = journaled == checksums;
    // Whether each side names exactly the table's endpoints (the usual
    // case), decided once: it picks both the check below and the fill.
    let covered = covers(table, checksums);
    let journaled_covered = if same { covered } else { covers(table, journaled) };
    let known = |side: &EndpointChecksums| side.0.keys().all(|e| table.binary_search(e).is_ok());
    if !covered && !known(checksums) || !journaled_covered && !known(journaled) {
        return false;
    }
    if t.steps.is_empty() {
        // A tid is usually a few to a few dozen steps: room for the usual
        // case at once rather than doubling step by step.
        t.steps.reserve(BATCH_STEPS_RESERVED * columns::STEP_BYTES);
        t.replayed.reserve(BATCH_STEPS_RESERVED * table.len() * columns::CELL_BYTES);
    }
    if t.journaled_as_replayed && !same {
        t.journaled.clone_from(&t.replayed);
        t.journaled_absent.clone_from(&t.absent);
        t.journaled_as_replayed = false;
    }
    // Index of this step's first cell.
    let row = t.steps.len() / columns::STEP_BYTES * table.len();
    fill(table, row, checksums, covered, &mut t.replayed, &mut t.absent);
    if !t.journaled_as_replayed {
        fill(table, row, journaled, journaled_covered, &mut t.journaled, &mut t.journaled_absent);
    }
    columns::push_step(&mut t.steps, step);
    true
}

/// `p` in cells over `table` (sorted), for a `ReplayedTid`; `None` when its
/// aggregate names an endpoint the table lacks (it then travels as a plain
/// `Prepared`).
pub fn prepared_cells(table: &[String], p: &v1::Prepared) -> Option<v1::PreparedCells> {
    let mut aggregate = Vec::with_capacity(table.len() * columns::CELL_BYTES);
    let mut absent = Vec::new();
    // The usual case: the aggregate names exactly the table's endpoints, in
    // order (both are sorted).
    if p.aggregate.len() == table.len() && p.aggregate.iter().zip(table).all(|(c, e)| c.endpoint == *e) {
        for c in &p.aggregate {
            columns::push_cell(&mut aggregate, c.count, c.hash);
        }
    } else {
        if !p.aggregate.iter().all(|c| table.binary_search(&c.endpoint).is_ok()) {
            return None;
        }
        for (j, endpoint) in table.iter().enumerate() {
            match p.aggregate.iter().find(|c| c.endpoint == *endpoint) {
                Some(c) => columns::push_cell(&mut aggregate, c.count, c.hash),
                None => {
                    columns::push_cell(&mut aggregate, 0, 0);
                    absent.push(j as u32);
                }
            }
        }
    }
    Some(v1::PreparedCells { steps: p.steps, aggregate, absent, output_digest: p.output_digest, output_count: p.output_count })
}

/// Steps a new `ReplayedTid` has room for before its columns grow.
const BATCH_STEPS_RESERVED: usize = 16;

/// Whether `side` names exactly the endpoints of `table`, which is sorted
/// as its keys are: then its cells are its values in order.
fn covers(table: &[String], side: &EndpointChecksums) -> bool {
    side.0.len() == table.len() && side.0.keys().eq(table.iter())
}

/// Appends one step's cells of one side, marking the endpoints it lacks as
/// absent; `covered`: `covers(table, side)`.
fn fill(table: &[String], row: usize, side: &EndpointChecksums, covered: bool, column: &mut Vec<u8>, absent: &mut Vec<u32>) {
    if covered {
        for c in side.0.values() {
            columns::push_cell(column, c.count, c.hash);
        }
        return;
    }
    for (j, endpoint) in table.iter().enumerate() {
        match side.0.get(endpoint) {
            Some(c) => columns::push_cell(column, c.count, c.hash),
            None => {
                columns::push_cell(column, 0, 0);
                absent.push((row + j) as u32);
            }
        }
    }
}

/// A journal summary in its wire form: `Hello.journal_endpoints` (the
/// summary's sorted endpoint table) and `Hello.journal` (per tid, counts
/// and hashes in columns over that table, endpoints the tid lacks listed
/// in `absent`). Consumes the summary, each tid's entry as it is converted.
pub fn journal_summary_to_proto(summary: JournalSummary) -> (Vec<String>, Vec<v1::TidSummary>) {
    let JournalSummary { endpoints, tids, .. } = summary;
    let n = endpoints.len();
    let tids = tids
        .into_iter()
        .map(|t| {
            let (mut counts, mut hashes) = (vec![0; n], vec![0; n]);
            for &(i, c) in &t.sums {
                counts[i as usize] = c.count;
                hashes[i as usize] = c.hash;
            }
            // `sums` is ascending by index: the indices it skips are absent.
            let mut present = t.sums.iter().map(|(i, _)| *i).peekable();
            let absent = (0..n as u32).filter(|j| present.next_if_eq(j).is_none()).collect();
            v1::TidSummary {
                tid: t.tid,
                first_step: t.first_step,
                last_step: t.last_step,
                steps: t.steps,
                committed: t.committed,
                counts,
                hashes,
                absent,
            }
        })
        .collect();
    (endpoints, tids)
}

/// A step's input as journaled.
pub fn step_input_to_pb(input: &StepInput) -> Vec<pb::EndpointInput> {
    input
        .endpoints
        .iter()
        .map(|e| pb::EndpointInput {
            endpoint: e.endpoint.clone(),
            count: e.checksum.count,
            hash: e.checksum.hash,
            payload: Some(match &e.payload {
                Payload::Value(bytes) => pb::endpoint_input::Payload::Value(bytes.clone()),
                Payload::Reference(r) => pb::endpoint_input::Payload::Reference(pb::GeneratorRef {
                    seed: r.seed,
                    offset: r.offset,
                    count: r.count,
                }),
            }),
        })
        .collect()
}

/// A journaled step's input, back to the engine's form.
pub fn step_input_from_pb(endpoints: &[pb::EndpointInput]) -> Result<StepInput, String> {
    let mut out = StepInput::default();
    for e in endpoints {
        let payload = match &e.payload {
            Some(pb::endpoint_input::Payload::Value(bytes)) => Payload::Value(bytes.clone()),
            Some(pb::endpoint_input::Payload::Reference(r)) => {
                Payload::Reference(GeneratorRef { seed: r.seed, offset: r.offset, count: r.count })
            }
            None => return Err(format!("endpoint {:?} has neither a value nor a reference payload", e.endpoint)),
        };
        out.endpoints.push(EndpointInput {
            endpoint: e.endpoint.clone(),
            checksum: Checksum { count: e.count, hash: e.hash },
            payload,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_commands_are_errors_not_panics() {
        assert!(command_from_proto(None).is_err());
        let start = |mode| Some(v1::command::Command::Start(v1::Start { tid: 1, mode, prepare: false }));
        assert!(command_from_proto(start(0)).unwrap_err().contains("UNSPECIFIED"));
        assert!(command_from_proto(start(99)).unwrap_err().contains("unknown"));
        assert_eq!(command_from_proto(start(2)).unwrap(), Command::Start { tid: 1, mode: Mode::Replay, prepare: false });
        let commit = Some(v1::command::Command::Commit(v1::Commit {
            tid: 1,
            next: Some(v1::Start { tid: 2, mode: 7, prepare: false }),
        }));
        assert!(command_from_proto(commit).is_err());
    }

    #[test]
    fn step_input_round_trips_through_the_journal_form() {
        let input = StepInput {
            endpoints: vec![
                EndpointInput {
                    endpoint: "generator".into(),
                    checksum: Checksum { count: 3, hash: 9 },
                    payload: Payload::Reference(GeneratorRef { seed: 1, offset: 10, count: 3 }),
                },
                EndpointInput {
                    endpoint: "push".into(),
                    checksum: Checksum { count: 1, hash: 4 },
                    payload: Payload::Value(vec![1, 2, 3]),
                },
            ],
        };
        assert_eq!(step_input_from_pb(&step_input_to_pb(&input)).unwrap(), input);
        let mut broken = step_input_to_pb(&input);
        broken[0].payload = None;
        assert!(step_input_from_pb(&broken).unwrap_err().contains("generator"));
    }

    /// A summary's aggregates go into columns over its endpoint table; an
    /// endpoint a tid's steps never named is absent (count 0 is not).
    #[test]
    fn journal_summary_goes_into_columns_over_its_endpoint_table() {
        use lockstep_journal::TidSummary;
        let c = |n: u64| Checksum { count: n, hash: n * 10 };
        let tid = |tid, sums: Vec<(u32, Checksum)>| TidSummary { tid, first_step: tid, last_step: tid, steps: 1, sums, committed: tid == 1 };
        let summary = JournalSummary {
            endpoints: vec!["a".into(), "gen".into(), "push".into()],
            tids: vec![tid(1, vec![(1, c(2)), (2, c(0))]), tid(2, vec![]), tid(3, vec![(0, c(1)), (1, c(3)), (2, c(4))])],
            checkpoints: vec![],
            last_step: 3,
        };
        let (endpoints, tids) = journal_summary_to_proto(summary);
        assert_eq!(endpoints, ["a", "gen", "push"]);
        let cols: Vec<_> = tids.iter().map(|t| (t.tid, t.counts.clone(), t.hashes.clone(), t.absent.clone(), t.committed)).collect();
        assert_eq!(cols, vec![
            (1, vec![0, 2, 0], vec![0, 20, 0], vec![0], true),
            (2, vec![0, 0, 0], vec![0, 0, 0], vec![0, 1, 2], false),
            (3, vec![1, 3, 4], vec![10, 30, 40], vec![], false),
        ]);
    }

    /// A `ReplayedTid`'s columns read back: steps, replayed cells,
    /// journaled cells (`None` while `journaled_as_replayed`).
    #[allow(clippy::type_complexity)]
    fn read_columns(b: &v1::ReplayedTid) -> (Vec<u64>, Vec<(u64, u64)>, Option<Vec<(u64, u64)>>) {
        let journaled = (!b.journaled_as_replayed).then(|| columns::cells(&b.journaled).unwrap().collect());
        (columns::steps(&b.steps).unwrap().collect(), columns::cells(&b.replayed).unwrap().collect(), journaled)
    }

    /// Steps go into the columns in order, an endpoint missing on one side
    /// is marked absent on that side only, and a step naming an endpoint
    /// the batch's table lacks is refused without changing the batch.
    #[test]
    fn replayed_steps_fill_the_columns_and_refuse_a_new_endpoint() {
        let sums = |pairs: &[(&str, u64)]| -> EndpointChecksums {
            pairs.iter().map(|(e, n)| (e.to_string(), Checksum { count: *n, hash: n * 10 })).collect()
        };
        let table = step_table(&sums(&[("gen", 2)]), &sums(&[("gen", 2), ("push", 1)]));
        assert_eq!(table, ["gen", "push"]);
        let mut b = replayed_tid(4);
        assert!(push_replayed_step(&table, &mut b, 7, &sums(&[("gen", 2)]), &sums(&[("gen", 2), ("push", 1)])));
        assert!(push_replayed_step(&table, &mut b, 8, &sums(&[("push", 3)]), &sums(&[("push", 3)])));
        let (steps, replayed, journaled) = read_columns(&b);
        assert_eq!(steps, [7, 8]);
        assert_eq!((replayed, b.absent.clone()), (vec![(2, 20), (0, 0), (0, 0), (3, 30)], vec![1, 2]));
        assert_eq!((journaled, b.journaled_absent.clone()), (Some(vec![(2, 20), (1, 10), (0, 0), (3, 30)]), vec![2]));
        let before = b.clone();
        assert!(!push_replayed_step(&table, &mut b, 9, &sums(&[("other", 1)]), &sums(&[("other", 1)])));
        assert_eq!(b, before);
    }

    /// The journaled side is left out while every step journaled what it
    /// ingested, and written out whole (the earlier rows included) from
    /// the first step that differs.
    #[test]
    fn journaled_side_is_written_only_once_a_step_differs() {
        let sums = |pairs: &[(&str, u64)]| -> EndpointChecksums {
            pairs.iter().map(|(e, n)| (e.to_string(), Checksum { count: *n, hash: n * 10 })).collect()
        };
        let table = vec!["gen".to_string(), "push".to_string()];
        let mut b = replayed_tid(4);
        assert!(push_replayed_step(&table, &mut b, 1, &sums(&[("gen", 2), ("push", 1)]), &sums(&[("gen", 2), ("push", 1)])));
        assert!(push_replayed_step(&table, &mut b, 2, &sums(&[("gen", 5)]), &sums(&[("gen", 5)])));
        assert!(b.journaled_as_replayed);
        assert!(b.journaled.is_empty() && b.journaled_absent.is_empty());
        assert_eq!(read_columns(&b).1, [(2, 20), (1, 10), (5, 50), (0, 0)]);
        assert_eq!(b.absent, [3]);
        assert!(push_replayed_step(&table, &mut b, 3, &sums(&[("gen", 4), ("push", 1)]), &sums(&[("gen", 6), ("push", 1)])));
        assert!(!b.journaled_as_replayed);
        let (steps, replayed, journaled) = read_columns(&b);
        assert_eq!(steps, [1, 2, 3]);
        assert_eq!(replayed, [(2, 20), (1, 10), (5, 50), (0, 0), (4, 40), (1, 10)]);
        assert_eq!(journaled.unwrap(), [(2, 20), (1, 10), (5, 50), (0, 0), (6, 60), (1, 10)]);
        assert_eq!((b.absent.clone(), b.journaled_absent.clone()), (vec![3], vec![3]));
        // Equal again: both sides go on being written.
        assert!(push_replayed_step(&table, &mut b, 4, &sums(&[("gen", 1), ("push", 1)]), &sums(&[("gen", 1), ("push", 1)])));
        assert_eq!(read_columns(&b).2.unwrap().len(), 8);
    }

    /// A Prepared's aggregate becomes one row of cells over the table, the
    /// endpoints it lacks marked absent; one naming an endpoint the table
    /// lacks does not fit.
    #[test]
    fn prepared_cells_fill_one_row_over_the_table() {
        let table: Vec<String> = ["gen", "push"].map(String::from).to_vec();
        let checksum = |e: &str, count: u64| v1::EndpointChecksum { endpoint: e.into(), count, hash: count * 10 };
        let prepared = |aggregate| v1::Prepared { tid: 4, steps: 3, aggregate, output_digest: 99, output_count: 7 };
        let full = prepared_cells(&table, &prepared(vec![checksum("gen", 2), checksum("push", 1)])).unwrap();
        assert_eq!(columns::cells(&full.aggregate).unwrap().collect::<Vec<_>>(), [(2, 20), (1, 10)]);
        assert_eq!((full.steps, full.output_digest, full.output_count, full.absent.len()), (3, 99, 7, 0));
        let part = prepared_cells(&table, &prepared(vec![checksum("push", 5)])).unwrap();
        assert_eq!(columns::cells(&part.aggregate).unwrap().collect::<Vec<_>>(), [(0, 0), (5, 50)]);
        assert_eq!(part.absent, [0]);
        assert_eq!(prepared_cells(&table, &prepared(vec![checksum("other", 1)])), None);
    }
}
