//! Replay verification (DESIGN invariants 3 and 6) as pure functions that
//! return a precise `Diagnosis` or nothing.
//!
//! Step counts are compared only between a host's replay and that same
//! host's journal (the same recorded steps re-run), never across hosts or
//! across live runs, where the number of steps legitimately varies.

use lockstep_journal::{Aggregate, Difference};

use super::{Diagnosis, Hello, HostProgress, JournalTid, PreparedReport, StepReport};
use crate::ledger::{HostTxnRecord, LedgerState, Tid, TxnStatus};

/// A replayed step must ingest exactly what the journal recorded for it.
pub fn replayed_step(host: &str, r: &StepReport) -> Option<Diagnosis> {
    let Some(journaled) = &r.journaled else {
        return Some(Diagnosis {
            summary: "replayed step carries no journaled checksums to verify against".into(),
            host: Some(host.into()),
            tid: Some(r.tid),
            step: Some(r.step),
            hint: "host agent bug: a replayed StepDone must include the journal's checksums".into(),
            ..Default::default()
        });
    };
    let diffs = journaled.diff(&r.checksums);
    let first = diffs.first()?;
    Some(divergence(
        "replay diverged from the journal: the replayed step ingested different input than was recorded",
        host,
        r.tid,
        Some(r.step),
        first,
        &diffs,
        "the engine is not deterministic on replay (input regenerated differently, or re-sharded); the journal is \
         intact. Fix the engine or its configuration, then Resume; the evidence is in this host's journal",
    ))
}

/// A host's Prepared must account for exactly the steps it reported.
pub fn prepared_matches_steps(host: &str, p: &HostProgress, r: &PreparedReport) -> Option<Diagnosis> {
    if r.steps != p.steps {
        return Some(Diagnosis {
            summary: format!("host prepared {} steps but reported {} StepDone for this tid", r.steps, p.steps),
            host: Some(host.into()),
            tid: Some(r.tid),
            expected: Some(format!("{} steps", p.steps)),
            actual: Some(format!("{} steps", r.steps)),
            hint: "a step report was lost or invented; keep both logs and report it".into(),
            ..Default::default()
        });
    }
    let diffs = p.sum.diff(&r.aggregate);
    let first = diffs.first()?;
    Some(divergence(
        "host's prepared aggregate differs from the sum of its step reports",
        host,
        r.tid,
        None,
        first,
        &diffs,
        "a step report was lost or misreported; keep both logs and report it",
    ))
}

/// Replay of a committed tid: the replayed aggregate must equal the journal's
/// and the ledger's, and the output digest the ledger's.
pub fn replayed_txn(
    host: &str,
    r: &PreparedReport,
    journal: Option<&JournalTid>,
    ledger: Option<&HostTxnRecord>,
) -> Option<Diagnosis> {
    let journal_steps = journal.map_or(0, |j| j.steps);
    if r.steps != journal_steps {
        let first_missing = journal.map(|j| j.first_step + r.steps);
        return Some(Diagnosis {
            summary: format!("replay ran {} steps but the journal holds {journal_steps} for this tid", r.steps),
            host: Some(host.into()),
            tid: Some(r.tid),
            step: first_missing,
            expected: Some(format!("{journal_steps} steps")),
            actual: Some(format!("{} steps", r.steps)),
            hint: "the host skipped or invented replay steps; keep its journal and log and report it".into(),
            ..Default::default()
        });
    }
    // The usual case, everything equal, is checked without building an
    // aggregate; a difference is then diagnosed in full.
    let diffs = match journal {
        Some(j) if j.aggregate.matches(&r.aggregate) => Vec::new(),
        Some(j) => j.aggregate.to_aggregate().diff(&r.aggregate),
        None => Aggregate::default().diff(&r.aggregate),
    };
    if let Some(first) = diffs.first() {
        return Some(divergence(
            "replayed input aggregate differs from the journaled aggregate",
            host,
            r.tid,
            None,
            first,
            &diffs,
            "the engine is not deterministic on replay; fix it, then Resume",
        ));
    }
    let Some(ledger) = ledger else {
        return Some(Diagnosis {
            summary: "the ledger has no record of this host in a committed tid".into(),
            host: Some(host.into()),
            tid: Some(r.tid),
            hint: "the ledger and the host set disagree; check --hosts against the ledger's members".into(),
            ..Default::default()
        });
    };
    let diffs = if ledger.aggregate.matches(&r.aggregate) { Vec::new() } else { ledger.aggregate().diff(&r.aggregate) };
    if let Some(first) = diffs.first() {
        return Some(divergence(
            "replayed input aggregate differs from the aggregate the ledger recorded at commit",
            host,
            r.tid,
            None,
            first,
            &diffs,
            "the host's journal no longer matches what was committed (edited, or from another run); restore the \
             host's volume",
        ));
    }
    if ledger.output_digest != r.output_digest {
        return Some(Diagnosis {
            summary: "replayed output digest differs from the one recorded at commit: state or operators diverged".into(),
            host: Some(host.into()),
            tid: Some(r.tid),
            expected: Some(format!("output digest {:#018x}", ledger.output_digest)),
            actual: Some(format!("output digest {:#018x}", r.output_digest)),
            hint: "the engine's state after restore differs, or an operator is not deterministic; check the checkpoint \
                   and the engine version"
                .into(),
            ..Default::default()
        });
    }
    None
}

/// DESIGN invariant 6, checked when every host has joined: the journal may
/// name no tid the ledger never began, and must hold every step of every tid
/// the ledger committed after the recovery checkpoint.
pub fn journal_against_ledger(host: &str, hello: &Hello, ledger: &LedgerState, checkpoint: Tid) -> Option<Diagnosis> {
    for j in hello.journal.iter().filter(|j| j.tid > checkpoint) {
        if ledger.txn(j.tid).is_none() {
            return Some(Diagnosis {
                summary: format!("host's journal names tid {} which the ledger never began", j.tid),
                host: Some(host.into()),
                tid: Some(j.tid),
                step: Some(j.first_step),
                expected: Some(format!("tids up to {} (ledger high-water mark)", ledger.tid_high_water)),
                actual: Some(format!("tid {}", j.tid)),
                hint: "this journal was written under another ledger (foreign volume, or the coordinator's data was \
                       lost); point the host or the coordinator at the right data directory"
                    .into(),
                ..Default::default()
            });
        }
    }
    for t in ledger.txns.values().filter(|t| t.tid > checkpoint && t.status == TxnStatus::Committed) {
        let Some(rec) = t.hosts.get(host) else { continue };
        let journaled = hello.journaled(t.tid);
        let steps = journaled.map(|j| j.steps).unwrap_or(0);
        if steps != rec.steps {
            return Some(Diagnosis {
                summary: if journaled.is_none() {
                    format!("host's journal lacks tid {} which the ledger committed", t.tid)
                } else {
                    format!("host's journal holds {steps} steps of committed tid {}, the ledger recorded {}", t.tid, rec.steps)
                },
                host: Some(host.into()),
                tid: Some(t.tid),
                expected: Some(format!("{} steps", rec.steps)),
                actual: Some(format!("{steps} steps")),
                hint: "the host's journal lost data (wrong or restored volume); restore the host's data volume".into(),
                ..Default::default()
            });
        }
    }
    None
}

fn divergence(
    what: &str,
    host: &str,
    tid: Tid,
    step: Option<u64>,
    first: &Difference,
    all: &[Difference],
    hint: &str,
) -> Diagnosis {
    let (expected, actual) = match first {
        Difference::OnlyExpected { expected, .. } => (expected.to_string(), "endpoint absent (present on one side only)".into()),
        Difference::OnlyActual { actual, .. } => ("endpoint absent (present on one side only)".into(), actual.to_string()),
        Difference::Differs { expected, actual, .. } => (expected.to_string(), actual.to_string()),
    };
    let more = if all.len() > 1 { format!(" ({} endpoints differ; first: {first})", all.len()) } else { format!(" ({first})") };
    Diagnosis {
        summary: format!("{what}{more}"),
        host: Some(host.into()),
        tid: Some(tid),
        step,
        endpoint: Some(first.endpoint().to_owned()),
        expected: Some(expected),
        actual: Some(actual),
        hint: hint.into(),
    }
}
