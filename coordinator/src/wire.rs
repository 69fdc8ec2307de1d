//! Conversions between `lockstep.v1` wire messages and the core's domain
//! types, in one place. Malformed input (unknown enum values, a report with
//! no body) becomes a typed error, never a panic.

use lockstep_journal::{Aggregate, Checksum, EndpointChecksums};
use lockstep_proto::v1 as pb;

use crate::core::{
    Cmd, Diagnosis, Event, Hello, HostId, HostTxnState, JournalTid, Mode, PreparedReport, Resumable, Start, StepReport,
    Sums, Tid,
};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("report #{seq} has no body")]
    Empty { seq: u64 },
    #[error("report #{seq}: unknown {what} value {value}")]
    BadEnum { seq: u64, what: &'static str, value: i32 },
    #[error("report #{seq} is a second Hello on the same stream")]
    SecondHello { seq: u64 },
    #[error("endpoint {endpoint:?} appears twice in one checksum list")]
    DuplicateEndpoint { endpoint: String },
}

pub fn aggregate_from(list: &[pb::EndpointChecksum]) -> Result<Aggregate, WireError> {
    let mut out = EndpointChecksums::new();
    for c in list {
        if out.0.insert(c.endpoint.clone(), Checksum { count: c.count, hash: c.hash }).is_some() {
            return Err(WireError::DuplicateEndpoint { endpoint: c.endpoint.clone() });
        }
    }
    Ok(out)
}

pub fn aggregate_to(a: &Aggregate) -> Vec<pb::EndpointChecksum> {
    a.0.iter().map(|(e, c)| pb::EndpointChecksum { endpoint: e.clone(), count: c.count, hash: c.hash }).collect()
}

/// The Hello as the core takes it. `recorded(tid)` is what the ledger
/// recorded for this host in `tid`, if anything: a journal summary equal to
/// it is kept as that same allocation.
pub fn hello_from<'a>(h: pb::Hello, recorded: impl Fn(Tid) -> Option<&'a Sums>) -> Result<Hello, WireError> {
    // One summary per tid after the host's checkpoint, kept for the whole
    // recovery: compact, the ledger's own record when it matches (nearly
    // always), else with endpoint names shared with the tid before.
    let mut journal: Vec<JournalTid> = Vec::with_capacity(h.journal.len());
    for j in h.journal {
        let sums = j.aggregate.iter().map(|c| (c.endpoint.as_str(), c.count, c.hash));
        let aggregate = Sums::build_as(sums, journal.last().map(|p| &p.aggregate), recorded(j.tid))
            .map_err(|endpoint| WireError::DuplicateEndpoint { endpoint })?;
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
                aggregate: aggregate_from(&r.aggregate)?,
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
        resumable,
    })
}

fn prepared_from(p: pb::Prepared) -> Result<PreparedReport, WireError> {
    Ok(PreparedReport {
        tid: p.tid,
        steps: p.steps,
        aggregate: aggregate_from(&p.aggregate)?,
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

/// A report after the Hello, as a core event for `host`.
pub fn report_to_event(host: &HostId, r: pb::HostReport) -> Result<Event, WireError> {
    use pb::host_report::Report;
    let seq = r.seq;
    let host = host.clone();
    Ok(match r.report.ok_or(WireError::Empty { seq })? {
        Report::Hello(_) => return Err(WireError::SecondHello { seq }),
        Report::StepDone(s) => {
            let mode = mode_from(seq, s.mode)?;
            Event::Step {
                host,
                report: StepReport {
                    tid: s.tid,
                    step: s.step,
                    checksums: aggregate_from(&s.checksums)?,
                    journaled: if mode == Mode::Replay { Some(aggregate_from(&s.journaled)?) } else { None },
                    state: state_from(seq, s.state)?,
                    mode,
                },
            }
        }
        Report::Prepared(p) => Event::Prepared { host, report: prepared_from(p)? },
        Report::Committed(c) => Event::Committed { host, tid: c.tid },
        Report::CheckpointDone(c) => Event::CheckpointDone { host, tid: c.tid },
        Report::Restored(r) => Event::Restored { host, checkpoint: r.checkpoint_tid },
        Report::Error(e) => Event::HostError { host, kind: e.kind, message: e.message, tid: e.tid },
        Report::Heartbeat(_) => Event::Heartbeat { host },
    })
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
        assert!(matches!(report_to_event(&host, pb::HostReport { seq: 3, report: None }), Err(WireError::Empty { seq: 3 })));
        let bad_mode = pb::HostReport {
            seq: 4,
            report: Some(pb::host_report::Report::StepDone(pb::StepDone { mode: 42, ..Default::default() })),
        };
        assert!(matches!(report_to_event(&host, bad_mode), Err(WireError::BadEnum { what: "TxnMode", .. })));
        let dup = vec![
            pb::EndpointChecksum { endpoint: "a".into(), count: 1, hash: 1 },
            pb::EndpointChecksum { endpoint: "a".into(), count: 1, hash: 1 },
        ];
        assert!(aggregate_from(&dup).is_err());
    }

    #[test]
    fn hello_journal_summaries_are_compact_and_checked() {
        let ep = |e: &str, n| pb::EndpointChecksum { endpoint: e.into(), count: n, hash: n };
        let tid = |t, agg| pb::TidSummary { tid: t, first_step: t, last_step: t, steps: 1, aggregate: agg, committed: true };
        let hello = |journal| pb::Hello { host_id: "h0".into(), journal, ..Default::default() };
        let h = hello_from(hello(vec![tid(1, vec![ep("push", 0), ep("gen", 3)]), tid(2, vec![ep("gen", 4), ep("push", 1)])]), |_| None)
            .unwrap();
        let want: Aggregate = [("gen", 4), ("push", 1)]
            .iter()
            .map(|(e, n)| (e.to_string(), Checksum { count: *n, hash: *n }))
            .collect();
        assert_eq!(h.journal[1].aggregate.to_aggregate(), want);
        assert_eq!(format!("{:?}", h.journal[0].aggregate), r#"{"gen": (3, 3), "push": (0, 0)}"#);
        let dup = hello(vec![tid(1, vec![ep("gen", 1), ep("gen", 2)])]);
        assert!(matches!(hello_from(dup, |_| None), Err(WireError::DuplicateEndpoint { endpoint }) if endpoint == "gen"));

        // A summary equal to the ledger's record is that record; another is not.
        let recorded = Sums::build([("gen", 4, 4), ("push", 1, 1)], None).unwrap();
        let j = vec![tid(1, vec![ep("push", 0), ep("gen", 3)]), tid(2, vec![ep("push", 1), ep("gen", 4)])];
        let h = hello_from(hello(j), |_| Some(&recorded)).unwrap();
        assert!(h.journal[1].aggregate.same_allocation(&recorded));
        assert!(!h.journal[0].aggregate.same_allocation(&recorded));
        assert_eq!(h.journal[1].aggregate.to_aggregate(), want);
        let dup = hello(vec![tid(2, vec![ep("gen", 4), ep("gen", 4)])]);
        assert!(hello_from(dup, |_| Some(&recorded)).is_err(), "a duplicate is refused even against a record");
    }
}
