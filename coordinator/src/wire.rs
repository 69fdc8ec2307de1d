//! Conversions between `lockstep.v1` wire messages and the core's domain
//! types, in one place. Malformed input (unknown enum values, a report with
//! no body) becomes a typed error, never a panic.

use lockstep_journal::{Aggregate, Checksum, EndpointChecksums};
use lockstep_proto::{columns, v1 as pb};

use crate::core::{
    Cmd, Diagnosis, Event, Hello, HostId, HostTxnState, JournalTid, Mode, PreparedReport, ReplayedBatch, Resumable, Start,
    StepReport, Sums, Tid,
};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("report #{seq} has no body")]
    Empty { seq: u64 },
    #[error("report #{seq}: unknown {what} value {value}")]
    BadEnum { seq: u64, what: &'static str, value: i32 },
    #[error("report #{seq} is a second Hello on the same stream")]
    SecondHello { seq: u64 },
    #[error("report #{seq} is a CommittedTids listing no tid")]
    NoCommittedTids { seq: u64 },
    #[error("endpoint {endpoint:?} appears twice in one checksum list")]
    DuplicateEndpoint { endpoint: String },
    /// A `ReplayedTids` that is not runs of replayed steps of tids (each
    /// optionally ending with that tid's Prepared) over its endpoint table.
    /// `tid` is the entry at fault (its first when the table is); `step`
    /// the step at fault, 0 when none is (an empty entry, a Prepared).
    #[error("report #{seq}: malformed ReplayedTids from host {host} for tid {tid} (step {step}): {problem}")]
    BadBatch { seq: u64, host: String, tid: u64, step: u64, problem: BatchProblem },
    /// A Hello whose journal summaries do not fit its endpoint table. `tid`
    /// is the summary at fault, 0 when the table itself is.
    #[error("Hello from host {host}: malformed journal summary (tid {tid}): {problem}")]
    BadJournal { host: String, tid: u64, problem: JournalProblem },
}

/// What is wrong with a Hello's journal summaries (`Hello.journal`,
/// columns over `Hello.journal_endpoints`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalProblem {
    #[error("endpoint {endpoint:?} appears twice in its endpoint table")]
    DuplicateEndpoint { endpoint: String },
    #[error("its columns hold {counts} counts and {hashes} hashes; the endpoint table has {endpoints} names")]
    ColumnLength { counts: usize, hashes: usize, endpoints: usize },
    #[error("its absent index {index} is out of range, not ascending, or has a nonzero count or hash")]
    BadAbsent { index: u32 },
    #[error("it follows the summary of tid {previous}; summaries come one per tid in ascending tid order")]
    OutOfOrder { previous: u64 },
}

/// What is wrong with a `ReplayedTids` report or one of its entries.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchProblem {
    #[error("it lists no tid")]
    NoTids,
    #[error("its entry holds neither a step nor a Prepared")]
    Empty,
    #[error("step numbers must strictly increase within a tid; step {step} follows step {previous}")]
    StepsOutOfOrder { step: u64, previous: u64 },
    #[error("step number 0 (steps are numbered from 1)")]
    StepZero,
    #[error("endpoint {endpoint:?} appears twice in its endpoint table")]
    DuplicateEndpoint { endpoint: String },
    #[error("its step column holds {bytes} bytes, not a whole number of 8-byte step numbers")]
    StepColumnLength { bytes: usize },
    #[error("its {side} column holds {bytes} bytes; that is {cells} cells of 16 bytes (steps × endpoints, or one per endpoint for a Prepared)")]
    ColumnLength { side: &'static str, bytes: usize, cells: usize },
    #[error("it sets journaled_as_replayed but also sends a journaled side ({bytes} bytes, {absent} absent indices)")]
    JournaledBesidesFlag { bytes: usize, absent: usize },
    #[error("its {side} absent index {index} is out of range, not ascending, or has a nonzero count or hash")]
    BadAbsent { side: &'static str, index: u32 },
}

/// Takes the list by value: the endpoint names move into the map, not
/// copied (every StepDone and Prepared goes through here).
pub fn aggregate_from(list: Vec<pb::EndpointChecksum>) -> Result<Aggregate, WireError> {
    use std::collections::btree_map::Entry;
    let mut out = EndpointChecksums::new();
    for c in list {
        match out.0.entry(c.endpoint) {
            Entry::Occupied(e) => return Err(WireError::DuplicateEndpoint { endpoint: e.key().clone() }),
            Entry::Vacant(e) => {
                e.insert(Checksum { count: c.count, hash: c.hash });
            }
        }
    }
    Ok(out)
}

pub fn aggregate_to(a: &Aggregate) -> Vec<pb::EndpointChecksum> {
    a.0.iter().map(|(e, c)| pb::EndpointChecksum { endpoint: e.clone(), count: c.count, hash: c.hash }).collect()
}

/// The Hello as the core takes it. `recorded(tid)` is what the ledger
/// recorded for this host in `tid`, if anything: a journal summary equal to
/// it is kept as that same allocation. The summaries' columns are checked
/// against the endpoint table (`WireError::BadJournal`).
pub fn hello_from<'a>(h: pb::Hello, recorded: impl Fn(Tid) -> Option<&'a Sums>) -> Result<Hello, WireError> {
    let table = &h.journal_endpoints;
    let bad = |tid: Tid, problem: JournalProblem| WireError::BadJournal { host: h.host_id.clone(), tid, problem };
    let mut names: Vec<&String> = table.iter().collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(0, JournalProblem::DuplicateEndpoint { endpoint: w[0].clone() }));
    }
    // One summary per tid after the host's checkpoint, kept for the whole
    // recovery: compact, the ledger's own record when it matches (nearly
    // always), else with endpoint names shared with the tid before.
    let mut journal: Vec<JournalTid> = Vec::with_capacity(h.journal.len());
    for j in &h.journal {
        // Ascending, so that the core finds a tid's summary by binary
        // search (`Hello::journaled`) over a journal of any length.
        if let Some(previous) = journal.last().map(|p| p.tid).filter(|&p| p >= j.tid) {
            return Err(bad(j.tid, JournalProblem::OutOfOrder { previous }));
        }
        if j.counts.len() != table.len() || j.hashes.len() != table.len() {
            let problem = JournalProblem::ColumnLength { counts: j.counts.len(), hashes: j.hashes.len(), endpoints: table.len() };
            return Err(bad(j.tid, problem));
        }
        let mut previous: Option<u32> = None;
        for &index in &j.absent {
            let i = index as usize;
            if i >= table.len() || previous.is_some_and(|p| index <= p) || j.counts[i] != 0 || j.hashes[i] != 0 {
                return Err(bad(j.tid, JournalProblem::BadAbsent { index }));
            }
            previous = Some(index);
        }
        // `absent` is ascending: the cells it skips are the aggregate.
        let mut absent = j.absent.iter().map(|&i| i as usize).peekable();
        let sums = (0..table.len())
            .filter(|&i| absent.next_if_eq(&i).is_none())
            .map(|i| (table[i].as_str(), j.counts[i], j.hashes[i]));
        let aggregate = Sums::build_as(sums, journal.last().map(|p| &p.aggregate), recorded(j.tid))
            .map_err(|endpoint| bad(j.tid, JournalProblem::DuplicateEndpoint { endpoint }))?;
        journal.push(JournalTid {
            tid: j.tid,
            first_step: j.first_step,
            last_step: j.last_step,
            steps: j.steps,
            aggregate,
            committed: j.committed,
        });
    }
    let resumable = h
        .resumable
        .map(|r| {
            Ok::<_, WireError>(Resumable {
                last_committed: r.last_committed_tid,
                state: state_from(0, r.state)?,
                tid: r.tid,
                steps: r.steps,
                aggregate: aggregate_from(r.aggregate)?,
                prepared: r.prepared.map(prepared_from).transpose()?,
                awaiting: r.awaiting.into_iter().map(prepared_from).collect::<Result<_, _>>()?,
            })
        })
        .transpose()?;
    Ok(Hello {
        protocol_version: h.protocol_version,
        host_id: h.host_id,
        cluster_id: h.cluster_id,
        highest_epoch: h.highest_epoch,
        checkpoints: h.checkpoints,
        journal,
        last_step: h.last_step,
        ingest_addr: h.ingest_addr,
        data_id: h.data_id,
        resumable,
    })
}

fn prepared_from(p: pb::Prepared) -> Result<PreparedReport, WireError> {
    Ok(PreparedReport {
        tid: p.tid,
        steps: p.steps,
        aggregate: aggregate_from(p.aggregate)?,
        output_digest: p.output_digest,
        output_count: p.output_count,
    })
}

fn mode_from(seq: u64, v: i32) -> Result<Mode, WireError> {
    match pb::TxnMode::try_from(v) {
        Ok(pb::TxnMode::Live) => Ok(Mode::Live),
        Ok(pb::TxnMode::Replay) => Ok(Mode::Replay),
        _ => Err(WireError::BadEnum { seq, what: "TxnMode", value: v }),
    }
}

fn state_from(seq: u64, v: i32) -> Result<HostTxnState, WireError> {
    Ok(match pb::HostTxnState::try_from(v) {
        Ok(pb::HostTxnState::Idle) => HostTxnState::Idle,
        Ok(pb::HostTxnState::OpenLive) => HostTxnState::OpenLive,
        Ok(pb::HostTxnState::OpenReplay) => HostTxnState::OpenReplay,
        Ok(pb::HostTxnState::Prepared) => HostTxnState::Prepared,
        Ok(pb::HostTxnState::Unspecified) => HostTxnState::Unspecified,
        Err(_) => return Err(WireError::BadEnum { seq, what: "HostTxnState", value: v }),
    })
}

/// A report after the Hello, as core events for `host`, appended to `out`
/// in the order the host reported them. Every report is one event, except
/// the two batches: `ReplayedTids` (per listed tid one `Replayed` event,
/// which stands for a `Step` per listed step, then a `Prepared` if it
/// carries one) and `CommittedTids` (one `Committed` per listed tid),
/// exactly the events the separate reports would have been, so the core
/// checks and diagnoses them the same way. On an error nothing is
/// appended.
pub fn report_to_events(host: &HostId, r: pb::HostReport, out: &mut Vec<Event>) -> Result<(), WireError> {
    use pb::host_report::Report;
    let seq = r.seq;
    let host = host.clone();
    let event = match r.report.ok_or(WireError::Empty { seq })? {
        Report::Hello(_) => return Err(WireError::SecondHello { seq }),
        Report::StepDone(s) => {
            let mode = mode_from(seq, s.mode)?;
            Event::Step {
                host,
                report: StepReport {
                    tid: s.tid,
                    step: s.step,
                    checksums: aggregate_from(s.checksums)?,
                    journaled: if mode == Mode::Replay { Some(aggregate_from(s.journaled)?) } else { None },
                    state: state_from(seq, s.state)?,
                    mode,
                },
            }
        }
        Report::ReplayedTids(run) => return replayed_tids_to_events(seq, host, run, out),
        Report::Prepared(p) => Event::Prepared { host, report: prepared_from(p)? },
        Report::Committed(c) => Event::Committed { host, tid: c.tid },
        Report::CommittedTids(c) => {
            if c.tids.is_empty() {
                return Err(WireError::NoCommittedTids { seq });
            }
            out.extend(c.tids.into_iter().map(|tid| Event::Committed { host: host.clone(), tid }));
            return Ok(());
        }
        Report::CheckpointDone(c) => Event::CheckpointDone { host, tid: c.tid },
        Report::Restored(r) => Event::Restored { host, checkpoint: r.checkpoint_tid },
        Report::Error(e) => Event::HostError { host, kind: e.kind, message: e.message, tid: e.tid },
        Report::Heartbeat(_) => Event::Heartbeat { host },
    };
    out.push(event);
    Ok(())
}

/// `ReplayedTids` as the core's events: one `ReplayedBatch` per tid (the
/// `StepDone`s, state OpenReplay, mode Replay, and the `Prepared` it stands
/// for), all sharing the report's endpoint table. The report's own shape is
/// checked here, before it reaches the core, so that a malformed one is
/// refused whole (and named) rather than half-applied; whether the steps
/// fit the host's position is the core's check, as for single reports.
fn replayed_tids_to_events(seq: u64, host: HostId, run: pb::ReplayedTids, out: &mut Vec<Event>) -> Result<(), WireError> {
    let Some(first) = run.tids.first().map(|t| t.tid) else {
        return Err(WireError::BadBatch { seq, host, tid: 0, step: 0, problem: BatchProblem::NoTids });
    };
    let mut names: Vec<&String> = run.endpoints.iter().collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        let problem = BatchProblem::DuplicateEndpoint { endpoint: w[0].clone() };
        return Err(WireError::BadBatch { seq, host, tid: first, step: 0, problem });
    }
    let endpoints: std::sync::Arc<[String]> = run.endpoints.into();
    let start = out.len();
    for t in run.tids {
        match replayed_tid_to_batch(seq, &host, &endpoints, t) {
            Ok(batch) => out.push(Event::Replayed { host: host.clone(), batch }),
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// One entry of a `ReplayedTids` (its table `endpoints`, names checked
/// unique) as the core's `ReplayedBatch`.
fn replayed_tid_to_batch(seq: u64, host: &HostId, endpoints: &std::sync::Arc<[String]>, b: pb::ReplayedTid) -> Result<ReplayedBatch, WireError> {
    let tid = b.tid;
    let bad = |step: u64, problem: BatchProblem| WireError::BadBatch { seq, host: host.clone(), tid, step, problem };
    let Some(steps) = columns::steps(&b.steps) else {
        return Err(bad(0, BatchProblem::StepColumnLength { bytes: b.steps.len() }));
    };
    let steps: Vec<u64> = steps.collect();
    if steps.is_empty() && b.prepared.is_none() {
        return Err(bad(0, BatchProblem::Empty));
    }
    let mut previous = 0u64;
    for &step in &steps {
        if step == 0 {
            return Err(bad(0, BatchProblem::StepZero));
        }
        if step <= previous {
            return Err(bad(step, BatchProblem::StepsOutOfOrder { step, previous }));
        }
        previous = step;
    }
    let width = endpoints.len();
    // One pass over the bytes into a vector of exactly the right size;
    // `rows` of `width` cells, row `i` standing for `step_of(i)`.
    let column = |bytes: &[u8], absent: Vec<u32>, side: &'static str, rows: usize, step_of: &dyn Fn(usize) -> u64| {
        let cells = rows * width;
        let Some(read) = columns::cells(bytes).filter(|read| read.len() == cells) else {
            return Err(bad(0, BatchProblem::ColumnLength { side, bytes: bytes.len(), cells }));
        };
        let mut cells: Vec<Option<Checksum>> = read.map(|(count, hash)| Some(Checksum { count, hash })).collect();
        let mut previous: Option<u32> = None;
        for index in absent {
            match cells.get_mut(index as usize) {
                Some(cell) if previous.is_none_or(|p| index > p) && *cell == Some(Checksum::EMPTY) => *cell = None,
                _ => return Err(bad(step_of(index as usize / width.max(1)), BatchProblem::BadAbsent { side, index })),
            }
            previous = Some(index);
        }
        Ok(cells)
    };
    let step_of = |row: usize| steps.get(row).copied().unwrap_or(0);
    let replayed = column(&b.replayed, b.absent, "replayed", steps.len(), &step_of)?;
    let journaled = if b.journaled_as_replayed {
        if !b.journaled.is_empty() || !b.journaled_absent.is_empty() {
            return Err(bad(0, BatchProblem::JournaledBesidesFlag { bytes: b.journaled.len(), absent: b.journaled_absent.len() }));
        }
        None
    } else {
        Some(column(&b.journaled, b.journaled_absent, "journaled", steps.len(), &step_of)?)
    };
    let prepared = match b.prepared {
        None => None,
        Some(p) => {
            let cells = column(&p.aggregate, p.absent, "prepared aggregate", 1, &|_| 0)?;
            let aggregate = endpoints.iter().zip(cells).filter_map(|(e, c)| c.map(|c| (e.clone(), c))).collect();
            Some(PreparedReport { tid, steps: p.steps, aggregate, output_digest: p.output_digest, output_count: p.output_count })
        }
    };
    Ok(ReplayedBatch { tid, endpoints: endpoints.clone(), steps, replayed, journaled, prepared })
}

fn mode_to(m: Mode) -> i32 {
    match m {
        Mode::Live => pb::TxnMode::Live as i32,
        Mode::Replay => pb::TxnMode::Replay as i32,
    }
}

fn start_to(s: &Start) -> pb::Start {
    pb::Start { tid: s.tid, mode: mode_to(s.mode), prepare: s.prepare }
}

pub fn command_to(seq: u64, epoch: u64, cmd: &Cmd) -> pb::Command {
    use pb::command::Command as C;
    let command = match cmd {
        Cmd::Start(start) => C::Start(start_to(start)),
        Cmd::Prepare { tid, next } => C::Prepare(pb::Prepare { tid: *tid, next: next.as_ref().map(start_to) }),
        Cmd::Commit { tid, next } => C::Commit(pb::Commit { tid: *tid, next: next.as_ref().map(start_to) }),
        Cmd::Checkpoint { tid } => C::Checkpoint(pb::Checkpoint { tid: *tid }),
        Cmd::CheckpointComplete { tid } => C::CheckpointComplete(pb::CheckpointComplete { tid: *tid }),
        Cmd::Restore { checkpoint } => C::Restore(pb::Restore { checkpoint_tid: *checkpoint }),
        Cmd::Stop { reason } => C::Stop(pb::Stop { reason: reason.clone() }),
    };
    pb::Command { seq, epoch, command: Some(command) }
}

pub fn failure_to(d: Option<&Diagnosis>) -> pb::Failure {
    match d {
        None => pb::Failure::default(),
        Some(d) => pb::Failure {
            failed: true,
            summary: d.to_string(),
            host_id: d.host.clone().unwrap_or_default(),
            tid: d.tid.unwrap_or(0),
            step: d.step.unwrap_or(0),
            endpoint: d.endpoint.clone().unwrap_or_default(),
            expected: d.expected.clone().unwrap_or_default(),
            actual: d.actual.clone().unwrap_or_default(),
            hint: d.hint.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_reports_are_typed_errors() {
        let host = "h0".to_string();
        let mut out = Vec::new();
        assert!(matches!(report_to_events(&host, pb::HostReport { seq: 3, report: None }, &mut out), Err(WireError::Empty { seq: 3 })));
        let bad_mode = pb::HostReport {
            seq: 4,
            report: Some(pb::host_report::Report::StepDone(pb::StepDone { mode: 42, ..Default::default() })),
        };
        assert!(matches!(report_to_events(&host, bad_mode, &mut out), Err(WireError::BadEnum { what: "TxnMode", .. })));
        assert!(out.is_empty());
        let dup = vec![
            pb::EndpointChecksum { endpoint: "a".into(), count: 1, hash: 1 },
            pb::EndpointChecksum { endpoint: "a".into(), count: 1, hash: 1 },
        ];
        assert!(aggregate_from(dup).is_err());
    }

    /// `CommittedTids` is its single `Committed` reports, in order; an
    /// empty one is refused and adds nothing.
    #[test]
    fn committed_tids_decode_into_the_events_of_single_reports() {
        let host = "h0".to_string();
        let report = |seq, r| pb::HostReport { seq, report: Some(r) };
        let mut batched = Vec::new();
        let run = pb::host_report::Report::CommittedTids(pb::CommittedTids { tids: vec![7, 8, 10] });
        report_to_events(&host, report(5, run), &mut batched).unwrap();
        let mut single = Vec::new();
        for (seq, tid) in [(5, 7), (6, 8), (7, 10)] {
            report_to_events(&host, report(seq, pb::host_report::Report::Committed(pb::Committed { tid })), &mut single).unwrap();
        }
        assert_eq!(format!("{batched:?}"), format!("{single:?}"));
        assert_eq!(batched.len(), 3);

        let mut out = Vec::new();
        let empty = report(9, pb::host_report::Report::CommittedTids(pb::CommittedTids { tids: vec![] }));
        let e = report_to_events(&host, empty, &mut out).unwrap_err();
        assert!(matches!(e, WireError::NoCommittedTids { seq: 9 }), "{e}");
        assert_eq!(e.to_string(), "report #9 is a CommittedTids listing no tid");
        assert!(out.is_empty());
    }

    /// A Hello's journal summary: columns over `table`, `(endpoint, n)`
    /// per listed endpoint (count and hash `n`), the others absent.
    fn summary(table: &[&str], t: u64, sums: &[(&str, u64)]) -> pb::TidSummary {
        let mut s = pb::TidSummary { tid: t, first_step: t, last_step: t, steps: 1, committed: true, ..Default::default() };
        for (j, e) in table.iter().enumerate() {
            let n = sums.iter().find(|(name, _)| name == e).map(|(_, n)| *n);
            s.counts.push(n.unwrap_or(0));
            s.hashes.push(n.unwrap_or(0));
            if n.is_none() {
                s.absent.push(j as u32);
            }
        }
        s
    }

    fn hello_with(table: &[&str], journal: Vec<pb::TidSummary>) -> pb::Hello {
        pb::Hello {
            host_id: "h0".into(),
            journal_endpoints: table.iter().map(|e| e.to_string()).collect(),
            journal,
            ..Default::default()
        }
    }

    #[test]
    fn hello_journal_summaries_are_compact_and_checked() {
        let table = ["gen", "push", "zz"];
        let h = hello_from(
            hello_with(&table, vec![summary(&table, 1, &[("push", 0), ("gen", 3)]), summary(&table, 2, &[("gen", 4), ("push", 1)])]),
            |_| None,
        )
        .unwrap();
        let want: Aggregate = [("gen", 4), ("push", 1)]
            .iter()
            .map(|(e, n)| (e.to_string(), Checksum { count: *n, hash: *n }))
            .collect();
        assert_eq!(h.journal[1].aggregate.to_aggregate(), want);
        assert_eq!(format!("{:?}", h.journal[0].aggregate), r#"{"gen": (3, 3), "push": (0, 0)}"#, "absent is not count 0");
        assert_eq!((h.journal[1].tid, h.journal[1].steps, h.journal[1].committed), (2, 1, true));

        // The table may come in any order; the aggregate is by name.
        let unsorted = ["zz", "push", "gen"];
        let h = hello_from(hello_with(&unsorted, vec![summary(&unsorted, 2, &[("gen", 4), ("push", 1)])]), |_| None).unwrap();
        assert_eq!(h.journal[0].aggregate.to_aggregate(), want);

        // A summary equal to the ledger's record is that record; another is not.
        let recorded = Sums::build([("gen", 4, 4), ("push", 1, 1)], None).unwrap();
        let j = vec![summary(&table, 1, &[("push", 0), ("gen", 3)]), summary(&table, 2, &[("push", 1), ("gen", 4)])];
        let h = hello_from(hello_with(&table, j), |_| Some(&recorded)).unwrap();
        assert!(h.journal[1].aggregate.same_allocation(&recorded));
        assert!(!h.journal[0].aggregate.same_allocation(&recorded));
        assert_eq!(h.journal[1].aggregate.to_aggregate(), want);
    }

    /// A Hello whose summaries do not fit its endpoint table is refused
    /// with an error naming the host, the tid and the problem.
    #[test]
    fn malformed_hello_journal_summaries_are_refused_and_named() {
        let table = ["gen", "push"];
        let refuse = |table: &[&str], edit: &dyn Fn(&mut pb::TidSummary)| {
            let mut s = summary(table, 7, &[("gen", 4)]);
            edit(&mut s);
            let e = hello_from(hello_with(table, vec![summary(table, 6, &[("gen", 1), ("push", 1)]), s]), |_| None).unwrap_err();
            let WireError::BadJournal { host, tid, problem } = &e else { panic!("{e}") };
            assert_eq!(host, "h0");
            assert!(e.to_string().contains("host h0") && e.to_string().contains(&format!("tid {tid}")), "{e}");
            (*tid, problem.clone())
        };
        let dup = refuse(&["gen", "push", "gen"], &|_| {});
        assert_eq!(dup, (0, JournalProblem::DuplicateEndpoint { endpoint: "gen".into() }));
        assert_eq!(refuse(&table, &|s| {
            s.hashes.pop();
        }), (7, JournalProblem::ColumnLength { counts: 2, hashes: 1, endpoints: 2 }));
        assert_eq!(refuse(&table, &|s| s.counts.push(0)), (7, JournalProblem::ColumnLength { counts: 3, hashes: 2, endpoints: 2 }));
        // `push` (index 1) is absent; out of range, repeated, out of order
        // or on a nonzero cell is malformed.
        assert_eq!(refuse(&table, &|s| s.absent.push(2)), (7, JournalProblem::BadAbsent { index: 2 }));
        assert_eq!(refuse(&table, &|s| s.absent.push(1)), (7, JournalProblem::BadAbsent { index: 1 }));
        assert_eq!(refuse(&table, &|s| s.absent.insert(0, 0)), (7, JournalProblem::BadAbsent { index: 0 }));
        assert_eq!(refuse(&table, &|s| s.absent = vec![1, 0]), (7, JournalProblem::BadAbsent { index: 0 }));
        assert_eq!(refuse(&table, &|s| s.counts[1] = 1), (7, JournalProblem::BadAbsent { index: 1 }));
        assert_eq!(refuse(&table, &|s| s.hashes[1] = 1), (7, JournalProblem::BadAbsent { index: 1 }));
        // Summaries come in ascending tid order, one per tid: the core
        // looks them up by binary search.
        assert_eq!(refuse(&table, &|s| s.tid = 6), (6, JournalProblem::OutOfOrder { previous: 6 }));
        assert_eq!(refuse(&table, &|s| s.tid = 5), (5, JournalProblem::OutOfOrder { previous: 6 }));
        // Without summaries, or without a table and with empty columns, a
        // Hello is fine.
        assert!(hello_from(hello_with(&table, vec![]), |_| None).is_ok());
        let h = hello_from(hello_with(&[], vec![summary(&[], 3, &[])]), |_| None).unwrap();
        assert!(h.journal[0].aggregate.is_empty());
    }

    fn ep(e: &str, n: u64) -> pb::EndpointChecksum {
        pb::EndpointChecksum { endpoint: e.into(), count: n, hash: n * 7 }
    }

    type Side<'a> = &'a [(&'a str, u64)];

    /// A `ReplayedTids` of one entry in columns over the endpoints `gen`
    /// and `push`, built by hand (as a foreign host would): each step lists
    /// its (endpoint, n) pairs per side; a missing endpoint is marked
    /// absent. Both sides are sent, as a host does once a step differs.
    fn batch(seq: u64, tid: u64, steps: &[(u64, Side, Side)], prepared: Option<pb::Prepared>) -> pb::HostReport {
        run(seq, vec![entry(tid, steps, prepared)])
    }

    const TABLE: [&str; 2] = ["gen", "push"];

    fn run(seq: u64, tids: Vec<pb::ReplayedTid>) -> pb::HostReport {
        let endpoints = TABLE.map(String::from).to_vec();
        pb::HostReport { seq, report: Some(pb::host_report::Report::ReplayedTids(pb::ReplayedTids { endpoints, tids })) }
    }

    /// One entry over `TABLE`; `prepared`'s aggregate goes into cells.
    fn entry(tid: u64, steps: &[(u64, Side, Side)], prepared: Option<pb::Prepared>) -> pb::ReplayedTid {
        let mut b = pb::ReplayedTid { tid, ..Default::default() };
        let put = |side: &dyn Fn(&str) -> Option<u64>, e: &str, index: u32, column: &mut Vec<u8>, absent: &mut Vec<u32>| match side(e) {
            Some(n) => columns::push_cell(column, n, n * 7),
            None => {
                columns::push_cell(column, 0, 0);
                absent.push(index);
            }
        };
        fn named<'a>(side: Side<'a>) -> impl Fn(&str) -> Option<u64> + 'a {
            move |e: &str| side.iter().find(|(name, _)| *name == e).map(|(_, n)| *n)
        }
        for (i, (step, got, journaled)) in steps.iter().enumerate() {
            columns::push_step(&mut b.steps, *step);
            for (j, e) in TABLE.iter().enumerate() {
                let index = (i * TABLE.len() + j) as u32;
                put(&named(got), e, index, &mut b.replayed, &mut b.absent);
                put(&named(journaled), e, index, &mut b.journaled, &mut b.journaled_absent);
            }
        }
        b.prepared = prepared.map(|p| {
            assert_eq!(p.tid, tid, "an entry carries the Prepared of its own tid");
            let mut cells = pb::PreparedCells { steps: p.steps, output_digest: p.output_digest, output_count: p.output_count, ..Default::default() };
            let find = |e: &str| p.aggregate.iter().find(|c| c.endpoint == e).map(|c| c.count);
            for (j, e) in TABLE.iter().enumerate() {
                put(&find, e, j as u32, &mut cells.aggregate, &mut cells.absent);
            }
            cells
        });
        b
    }

    /// `batch`, with the journaled side left out as `journaled_as_replayed`
    /// (every step's sides must be equal).
    fn batch_as_replayed(seq: u64, tid: u64, steps: &[(u64, Side, Side)]) -> pb::HostReport {
        assert!(steps.iter().all(|(_, got, journaled)| got == journaled));
        let mut r = batch(seq, tid, steps, None);
        let Some(pb::host_report::Report::ReplayedTids(run)) = r.report.as_mut() else { unreachable!() };
        let b = &mut run.tids[0];
        b.journaled.clear();
        b.journaled_absent.clear();
        b.journaled_as_replayed = true;
        r
    }

    fn single(seq: u64, tid: u64, step: u64, got: Side, journaled: Side) -> pb::HostReport {
        let list = |side: Side| side.iter().map(|(e, n)| ep(e, *n)).collect();
        let s = pb::StepDone {
            tid,
            step,
            checksums: list(got),
            journaled: list(journaled),
            state: pb::HostTxnState::OpenReplay as i32,
            mode: pb::TxnMode::Replay as i32,
        };
        pb::HostReport { seq, report: Some(pb::host_report::Report::StepDone(s)) }
    }

    /// A batch decodes into one `Replayed` event that stands for exactly
    /// the events its separate reports would have been: one `Step` per
    /// listed step, in order (absent endpoints absent, on each side on its
    /// own), then `Prepared`.
    #[test]
    fn replayed_tids_decode_into_the_events_of_single_reports() {
        let host = "h0".to_string();
        let prepared = pb::Prepared { tid: 5, steps: 3, aggregate: vec![ep("gen", 5), ep("push", 0)], output_digest: 9, output_count: 1 };
        let steps: &[(u64, Side, Side)] = &[
            (11, &[("gen", 2), ("push", 0)], &[("gen", 2), ("push", 0)]),
            (12, &[("gen", 3)], &[("gen", 3), ("push", 0)]),
            (14, &[], &[("push", 1)]),
        ];
        let mut from_batch = Vec::new();
        report_to_events(&host, batch(7, 5, steps, Some(prepared.clone())), &mut from_batch).unwrap();
        let [Event::Replayed { host: h, batch: b }] = &from_batch[..] else { panic!("one Replayed event: {from_batch:?}") };
        assert_eq!(h, "h0");
        let mut expanded: Vec<Event> =
            (0..b.steps.len()).map(|i| Event::Step { host: host.clone(), report: b.step_report(i) }).collect();
        expanded.extend(b.prepared.clone().map(|report| Event::Prepared { host: host.clone(), report }));

        let mut from_singles = Vec::new();
        for (seq, (step, got, journaled)) in steps.iter().enumerate() {
            report_to_events(&host, single(seq as u64, 5, *step, got, journaled), &mut from_singles).unwrap();
        }
        let r = pb::HostReport { seq: 9, report: Some(pb::host_report::Report::Prepared(prepared)) };
        report_to_events(&host, r, &mut from_singles).unwrap();
        assert_eq!(from_singles.len(), 4);
        assert_eq!(format!("{expanded:?}"), format!("{from_singles:?}"));

        // Steps alone, and a Prepared alone (the tid's steps went out in
        // an earlier batch), are batches too.
        let mut out = Vec::new();
        report_to_events(&host, batch(10, 6, &[(13, &[("gen", 1)], &[("gen", 1)])], None), &mut out).unwrap();
        assert!(matches!(&out[..], [Event::Replayed { batch, .. }] if batch.tid == 6 && batch.steps == [13] && batch.prepared.is_none()));
        let prepared_only = pb::Prepared { tid: 6, steps: 1, ..Default::default() };
        report_to_events(&host, batch(11, 6, &[], Some(prepared_only)), &mut out).unwrap();
        assert!(matches!(&out[1], Event::Replayed { batch, .. } if batch.steps.is_empty() && batch.prepared.as_ref().is_some_and(|p| p.tid == 6)));

        // Without a journaled side, each step's journaled checksums are its
        // replayed ones, absent endpoints included.
        let same: &[(u64, Side, Side)] = &[(21, &[("gen", 2)], &[("gen", 2)]), (22, &[("gen", 1), ("push", 4)], &[("gen", 1), ("push", 4)])];
        let mut from_flag = Vec::new();
        report_to_events(&host, batch_as_replayed(12, 7, same), &mut from_flag).unwrap();
        let mut from_both = Vec::new();
        report_to_events(&host, batch(12, 7, same, None), &mut from_both).unwrap();
        let ([Event::Replayed { batch: flag, .. }], [Event::Replayed { batch: both, .. }]) = (&from_flag[..], &from_both[..]) else { panic!() };
        assert!(flag.journaled.is_none());
        let reports = |b: &ReplayedBatch| format!("{:?}", (0..b.steps.len()).map(|i| b.step_report(i)).collect::<Vec<_>>());
        assert_eq!(reports(flag), reports(both));
        assert!(reports(flag).contains(r#"journaled: Some(EndpointChecksums({"gen": Checksum { count: 2"#), "{}", reports(flag));

        // Several tids in one report: one event each, in order, sharing the
        // report's endpoint table.
        let p = |tid| pb::Prepared { tid, steps: 1, aggregate: vec![ep("gen", 1)], output_digest: tid, output_count: 1 };
        let one: Side = &[("gen", 1)];
        let mut out = Vec::new();
        let two = run(13, vec![entry(8, &[(31, one, one)], Some(p(8))), entry(9, &[(32, one, one)], Some(p(9)))]);
        report_to_events(&host, two, &mut out).unwrap();
        let [Event::Replayed { batch: a, .. }, Event::Replayed { batch: b, .. }] = &out[..] else { panic!("two Replayed events: {out:?}") };
        assert_eq!((a.tid, a.steps.as_slice(), b.tid, b.steps.as_slice()), (8, &[31][..], 9, &[32][..]));
        assert!(std::sync::Arc::ptr_eq(&a.endpoints, &b.endpoints));
        let prepared = |b: &ReplayedBatch| b.prepared.as_ref().map(|p| (p.tid, p.output_digest, format!("{:?}", p.aggregate)));
        assert_eq!(prepared(a), Some((8, 8, r#"EndpointChecksums({"gen": Checksum { count: 1, hash: 7 }})"#.to_string())));
        assert_eq!(prepared(b).map(|p| p.0), Some(9));
    }

    /// A malformed batch is refused whole, with an error naming the host,
    /// the tid and the step at fault; nothing of it reaches the core.
    #[test]
    fn malformed_replayed_tids_are_refused_whole_and_named() {
        let host = "h2".to_string();
        let refuse = |r: pb::HostReport| {
            let mut out = vec![Event::Heartbeat { host: "h2".into() }];
            let e = report_to_events(&host, r, &mut out).unwrap_err();
            assert_eq!(out.len(), 1, "nothing appended on error");
            e
        };
        let one: Side = &[("gen", 1)];
        let e = refuse(batch(4, 9, &[], None));
        assert!(matches!(&e, WireError::BadBatch { seq: 4, tid: 9, problem: BatchProblem::Empty, .. }), "{e}");
        assert!(e.to_string().contains("host h2") && e.to_string().contains("tid 9"), "{e}");

        let e = refuse(batch(5, 9, &[(21, one, one), (23, one, one), (22, one, one)], None));
        assert!(matches!(&e, WireError::BadBatch { step: 22, problem: BatchProblem::StepsOutOfOrder { step: 22, previous: 23 }, .. }), "{e}");
        assert!(e.to_string().contains("step 22 follows step 23"), "{e}");
        let e = refuse(batch(5, 9, &[(21, one, one), (21, one, one)], None));
        assert!(matches!(&e, WireError::BadBatch { problem: BatchProblem::StepsOutOfOrder { .. }, .. }), "{e}");
        let e = refuse(batch(5, 9, &[(0, one, one)], None));
        assert!(matches!(&e, WireError::BadBatch { problem: BatchProblem::StepZero, .. }), "{e}");

        let e = refuse(run(6, vec![]));
        assert!(matches!(&e, WireError::BadBatch { seq: 6, tid: 0, problem: BatchProblem::NoTids, .. }), "{e}");
        assert!(e.to_string().contains("lists no tid"), "{e}");

        // The columns must fit the table and the steps.
        let edit_run = |f: &dyn Fn(&mut pb::ReplayedTids)| {
            let prepared = pb::Prepared { tid: 9, steps: 2, aggregate: vec![ep("gen", 2)], ..Default::default() };
            let mut r = batch(7, 9, &[(21, one, one), (22, &[("gen", 1), ("push", 2)], one)], Some(prepared));
            let Some(pb::host_report::Report::ReplayedTids(run)) = r.report.as_mut() else { unreachable!() };
            f(run);
            refuse(r)
        };
        let edit = |f: &dyn Fn(&mut pb::ReplayedTid)| edit_run(&|run| f(&mut run.tids[0]));
        let e = edit_run(&|run| run.endpoints[1] = "gen".into());
        assert!(matches!(&e, WireError::BadBatch { tid: 9, problem: BatchProblem::DuplicateEndpoint { endpoint }, .. } if endpoint == "gen"), "{e}");
        let e = edit(&|b| {
            b.replayed.pop();
        });
        assert!(matches!(&e, WireError::BadBatch { problem: BatchProblem::ColumnLength { side: "replayed", bytes: 63, cells: 4 }, .. }), "{e}");
        let e = edit(&|b| columns::push_cell(&mut b.journaled, 1, 1));
        assert!(matches!(&e, WireError::BadBatch { problem: BatchProblem::ColumnLength { side: "journaled", bytes: 80, cells: 4 }, .. }), "{e}");
        let e = edit(&|b| b.steps.push(0));
        assert!(matches!(&e, WireError::BadBatch { problem: BatchProblem::StepColumnLength { bytes: 17 }, .. }), "{e}");
        // The flag says there is no journaled side; one sent anyway is malformed.
        let e = edit(&|b| b.journaled_as_replayed = true);
        assert!(matches!(&e, WireError::BadBatch { problem: BatchProblem::JournaledBesidesFlag { bytes: 64, absent: 2 }, .. }), "{e}");
        let e = edit(&|b| b.absent.push(9));
        assert!(matches!(&e, WireError::BadBatch { problem: BatchProblem::BadAbsent { side: "replayed", index: 9 }, .. }), "{e}");
        // Journaled absent indices are 1 and 3; repeating one, or marking
        // a present (nonzero) cell absent, is malformed too.
        let e = edit(&|b| b.journaled_absent.push(3));
        assert!(matches!(&e, WireError::BadBatch { step: 22, problem: BatchProblem::BadAbsent { side: "journaled", index: 3 }, .. }), "{e}");
        let e = edit(&|b| b.absent.push(2));
        assert!(matches!(&e, WireError::BadBatch { step: 22, problem: BatchProblem::BadAbsent { index: 2, .. }, .. }), "{e}");
        // A Prepared's aggregate is one row of cells over the table, `push`
        // (index 1) absent.
        let e = edit(&|b| b.prepared.as_mut().unwrap().aggregate.truncate(16));
        assert!(matches!(&e, WireError::BadBatch { problem: BatchProblem::ColumnLength { side: "prepared aggregate", bytes: 16, cells: 2 }, .. }), "{e}");
        let e = edit(&|b| b.prepared.as_mut().unwrap().absent = vec![0, 1]);
        assert!(matches!(&e, WireError::BadBatch { step: 0, problem: BatchProblem::BadAbsent { side: "prepared aggregate", index: 0 }, .. }), "{e}");
        // A malformed later entry refuses the whole report, the entries
        // before it included.
        let e = edit_run(&|run| {
            let mut second = run.tids[0].clone();
            second.tid = 10;
            second.steps.clear();
            run.tids.push(second);
        });
        assert!(matches!(&e, WireError::BadBatch { tid: 10, problem: BatchProblem::ColumnLength { side: "replayed", .. }, .. }), "{e}");
    }
}
