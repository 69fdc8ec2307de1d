//! Continue or replay: the decision a new epoch makes once every host has
//! said Hello, as a pure function of the ledger and the Hellos.
//!
//! After a coordinator failover (a new raft leader starts a fresh core), a
//! coordinator restart, or a rejoin on one coordinator, the hosts that kept
//! their engine state offer it in `Hello.resumable`. With `C` the ledger's
//! last commit and `O` its open tid (if any), the pipeline CONTINUES without
//! a restore only when every host is in one of these states:
//!
//! - (a) idle at `C` (and, if `O` is open, with no journaled step of `O`);
//! - (b) open live in `O`, or prepared in `O`, at `C`, having run exactly
//!   the steps its journal holds for `O` (count and aggregate; a prepared
//!   report must say the same);
//! - (c) prepared in `C` with `last_committed` the ledger's commit before
//!   `C`, its prepared report equal to the ledger's record of `C` for this
//!   host (steps, aggregate, output digest): the ledger committed `C` but
//!   this host never got `Commit{C}`.
//!
//! - (d) commit pipeline: holding prepared tids awaiting their commit
//!   (`Resumable.awaiting`): those at or below `C` must be exactly the
//!   tids the ledger committed since the host's last commit, each report
//!   equal to the ledger's record (they get `Commit`); those above `C` must
//!   be the ledger's oldest open tids in order, each report equal to the
//!   journal; the host is then open (or prepared) in the next open tid
//!   with exactly its journaled steps, or prepared in a tid the ledger
//!   committed (counted with the committed ones; idle after them). Hosts that are behind are caught up
//!   with `Prepare{T, next}` to the furthest host's tid; a host prepared
//!   without a next below that tid cannot be, and replays.
//!
//! Anything else (no resumable: a restarted host, or one that lost its
//! stream mid-replay; a tid the ledger does not have open; progress that
//! differs from the journal or the ledger) sends the pipeline down the
//! replay path, with every host's reason in the notice. Continuing is then
//! exactly what the lost coordinator would have done next: `O` commits
//! through the normal Prepare/verify/Commit with each host's progress seeded
//! from what it says it ran (checked again when its Prepared arrives), and
//! `C` is released to (c) hosts only because the ledger holds it.

use std::collections::BTreeMap;

use lockstep_journal::Aggregate;

use super::{HostProgress, HostSlot, HostTxnState, PreparedReport, Resumable};
use crate::ledger::{HostId, LedgerState, Tid, TxnStatus};

/// What one host needs to continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostResume {
    /// (a) Idle at the last commit: `Start{O}` if a tid is open.
    Idle,
    /// (b) In the open tid with this progress (prepared or not: `Prepare`
    /// makes an open host prepare and a prepared one repeat its report).
    Open(HostProgress),
    /// (c) Prepared in the last committed tid: `Commit{C, next}`.
    CommitPending,
    /// (d) Commit pipeline: the host holds prepared tids awaiting their
    /// commit. `commit`: those the ledger committed (each gets `Commit{T}`,
    /// the host's own prepared tid among them when the ledger committed it
    /// too); `prepared`: those still open, the ledger's oldest open tids in
    /// order, each report equal to the journal; then `at`: the open tid it
    /// is in with its progress (open live, or prepared without a next), or
    /// `None`: idle at the last commit once `commit` is sent.
    Pipelined { commit: Vec<Tid>, prepared: Vec<PreparedReport>, at: Option<(Tid, HostProgress)> },
}

impl HostResume {
    /// The open tid this host is in, if any (`open`: the ledger's oldest).
    pub fn current(&self, open: Option<Tid>) -> Option<Tid> {
        match self {
            HostResume::Idle | HostResume::CommitPending => None,
            HostResume::Open(_) => open,
            HostResume::Pipelined { at, .. } => at.as_ref().map(|(t, _)| *t),
        }
    }
}

/// Every host's continuation, or why the pipeline must replay (one line per
/// host that does not fit, naming what it has and what the ledger has).
pub fn plan(ledger: &LedgerState, hosts: &BTreeMap<HostId, HostSlot>) -> Result<BTreeMap<HostId, HostResume>, String> {
    let mut plan = BTreeMap::new();
    let mut misfits = Vec::new();
    for (host, slot) in hosts {
        let Some(hello) = slot.hello.as_ref() else {
            misfits.push(format!("host {host} has not said Hello"));
            continue;
        };
        let journal = |tid: Tid| {
            hello.journaled(tid).map(|j| (j.steps, j.aggregate.to_aggregate())).unwrap_or_default()
        };
        let fitted = match hello.resumable.as_ref() {
            Some(r) if !r.awaiting.is_empty() => fit_pipelined(host, ledger, r, journal),
            r => fit(host, ledger, r, journal),
        };
        match fitted {
            Ok(r) => {
                plan.insert(host.clone(), r);
            }
            Err(why) => misfits.push(why),
        }
    }
    // A host prepared without a next tid (the tid before a checkpoint, or
    // a pipeline that had no tid begun ahead) cannot be caught up: the
    // coordinator that sent that Prepare sent no host a later tid.
    let open = ledger.open_txn().map(|t| t.tid);
    if let Some(furthest) = plan.values().filter_map(|r| r.current(open)).max() {
        for (host, r) in &plan {
            let resumable = hosts.get(host).and_then(|s| s.hello.as_ref()).and_then(|h| h.resumable.as_ref());
            let current = r.current(open);
            if resumable.is_some_and(|k| k.state == HostTxnState::Prepared) && current.is_some_and(|c| c < furthest) {
                misfits.push(format!(
                    "host {host} is prepared in tid {} with no next tid, but another host went on to tid {furthest}",
                    current.unwrap_or_default()
                ));
            }
        }
    }
    if misfits.is_empty() {
        Ok(plan)
    } else {
        Err(misfits.join("; "))
    }
}

/// (d): a host that holds prepared tids awaiting their commit (commit
/// pipeline, `Resumable.awaiting`).
fn fit_pipelined(
    host: &str,
    ledger: &LedgerState,
    r: &Resumable,
    journal: impl Fn(Tid) -> (u64, Aggregate),
) -> Result<HostResume, String> {
    let c = ledger.last_committed;
    let open: Vec<Tid> = ledger.open_tids().collect();
    let mut commit = Vec::new();
    let mut prepared = Vec::new();
    // Prepared (without a next) in a tid the ledger committed: it is held
    // like the awaiting ones, and the host is idle at C after them.
    let committed_current = r.state == HostTxnState::Prepared && r.tid <= c && r.tid > 0;
    let current_report = if committed_current {
        match r.prepared.as_ref().filter(|p| p.tid == r.tid) {
            Some(p) => Some(p.clone()),
            None => return Err(format!("host {host} is prepared in tid {} but offers no Prepared report of it", r.tid)),
        }
    } else {
        None
    };
    for p in r.awaiting.iter().chain(current_report.as_ref()) {
        if p.tid <= c {
            let Some(rec) = ledger.txn(p.tid).filter(|t| t.status == TxnStatus::Committed).and_then(|t| t.hosts.get(host)) else {
                return Err(format!(
                    "host {host} holds tid {} awaiting its commit, of which the ledger keeps no committed record for this host",
                    p.tid
                ));
            };
            prepared_says(host, p.tid, None, Some(p), rec.steps, &rec.aggregate(), Some(rec.output_digest))?;
            commit.push(p.tid);
        } else {
            let (steps, aggregate) = journal(p.tid);
            prepared_says(host, p.tid, None, Some(p), steps, &aggregate, None)?;
            prepared.push(p.clone());
        }
    }
    // (A host that claims commits beyond the ledger's gets an empty range,
    // not a panic, and is named below.)
    let committed_since: Vec<Tid> = ledger
        .txns
        .range(r.last_committed.saturating_add(1)..)
        .take_while(|(t, _)| **t <= c)
        .filter(|(_, t)| t.status == TxnStatus::Committed)
        .map(|(t, _)| *t)
        .collect();
    if r.last_committed > c || commit != committed_since {
        return Err(format!(
            "host {host} committed tid {} and holds {commit:?} awaiting their commit, but the ledger committed {committed_since:?} \
             since",
            r.last_committed
        ));
    }
    let held: Vec<Tid> = prepared.iter().map(|p| p.tid).collect();
    if open.get(..held.len()) != Some(&held[..]) {
        return Err(format!("host {host} holds prepared tids {held:?}, but the ledger's open tids are {open:?}"));
    }
    if committed_current {
        if !prepared.is_empty() {
            return Err(format!("host {host} holds open tids {held:?} before its prepared tid {}, which the ledger committed", r.tid));
        }
        // Idle at C once its commits are sent, like (c): no journaled step
        // of an open tid may be left unrun.
        if let Some((t, steps)) = open.iter().map(|t| (*t, journal(*t).0)).find(|(_, s)| *s > 0) {
            return Err(format!("host {host} is prepared in tid {}, but its journal holds {steps} steps of the open tid {t}", r.tid));
        }
        return Ok(HostResume::Pipelined { commit, prepared, at: None });
    }
    let next = open.get(held.len()).copied();
    match r.state {
        HostTxnState::OpenLive | HostTxnState::Prepared if Some(r.tid) == next => {
            Ok(HostResume::Pipelined { commit, prepared, at: Some((r.tid, kept_progress(host, r, journal)?)) })
        }
        _ => Err(format!(
            "host {host} is {:?} in tid {} after the tids it holds ({:?}), but the ledger's next open tid is {next:?}",
            r.state,
            r.tid,
            r.awaiting.iter().map(|p| p.tid).collect::<Vec<_>>()
        )),
    }
}

fn fit(
    host: &str,
    ledger: &LedgerState,
    r: Option<&Resumable>,
    journal: impl Fn(Tid) -> (u64, Aggregate),
) -> Result<HostResume, String> {
    let c = ledger.last_committed;
    let open = ledger.open_txn().map(|t| t.tid);
    let ledger_has = match open {
        Some(o) => format!("the ledger's last commit is tid {c} and tid {o} is open"),
        None => format!("the ledger's last commit is tid {c} and no tid is open"),
    };
    let Some(r) = r else {
        return Err(format!(
            "host {host} kept no state to continue from (it restarted, or lost its stream in the middle of a replay)"
        ));
    };
    let wrong = |what: String| Err(format!("host {host} {what}, but {ledger_has}"));
    match r.state {
        HostTxnState::Idle if r.last_committed == c => {
            let (steps, _) = open.map(&journal).unwrap_or_default();
            if steps > 0 {
                let o = open.unwrap_or_default();
                return Err(format!(
                    "host {host} is idle at tid {c}, but its journal holds {steps} steps of the open tid {o} that its \
                     engine has not run"
                ));
            }
            Ok(HostResume::Idle)
        }
        HostTxnState::Idle => wrong(format!("is idle at tid {}", r.last_committed)),
        HostTxnState::OpenLive | HostTxnState::Prepared if Some(r.tid) == open => {
            let o = r.tid;
            if r.last_committed != c {
                return wrong(format!("is in tid {o} after committing tid {}", r.last_committed));
            }
            Ok(HostResume::Open(kept_progress(host, r, journal)?))
        }
        HostTxnState::Prepared if r.tid == c && c > 0 => {
            let before = ledger.txns.range(..c).rev().find(|(_, t)| t.status == TxnStatus::Committed).map(|(t, _)| *t);
            if r.last_committed != before.unwrap_or(0) {
                return wrong(format!("is prepared in tid {c} after committing tid {}", r.last_committed));
            }
            let Some(rec) = ledger.txn(c).and_then(|t| t.hosts.get(host)) else {
                return wrong(format!("is prepared in tid {c}, of which the ledger keeps no record for this host"));
            };
            let kept = Some((r.steps, &r.aggregate));
            prepared_says(host, c, kept, r.prepared.as_ref(), rec.steps, &rec.aggregate(), Some(rec.output_digest))?;
            Ok(HostResume::CommitPending)
        }
        state => {
            let name = match state {
                HostTxnState::OpenLive => "open live",
                HostTxnState::Prepared => "prepared",
                HostTxnState::OpenReplay => "replaying",
                _ => "in an unknown state",
            };
            wrong(format!("is {name} in tid {} after committing tid {}", r.tid, r.last_committed))
        }
    }
}

/// A host open live (or prepared) in the open tid `r.tid`: what it ran must
/// be exactly what its journal holds for the tid (and a prepared host's
/// report must say the same); that is its progress to continue from.
fn kept_progress(host: &str, r: &Resumable, journal: impl Fn(Tid) -> (u64, Aggregate)) -> Result<HostProgress, String> {
    let o = r.tid;
    let (steps, aggregate) = journal(o);
    if (steps, &aggregate) != (r.steps, &r.aggregate) {
        return Err(format!(
            "host {host} ran {} steps of the open tid {o} (aggregate {}), but its journal holds {steps} (aggregate {})",
            r.steps,
            show(&r.aggregate),
            show(&aggregate)
        ));
    }
    if r.state == HostTxnState::Prepared {
        prepared_says(host, o, None, r.prepared.as_ref(), r.steps, &r.aggregate, None)?;
    }
    Ok(HostProgress {
        steps: r.steps,
        live_steps: r.steps,
        last_step: 0,
        records: r.aggregate.records(),
        sum: r.aggregate.clone(),
        prepared: None,
    })
}

/// A prepared host's kept report must be of `tid`, say what the host ran,
/// and equal what the ledger (or the journal) expects.
/// `kept`: what the host says it ran in `tid` beside the report (its
/// accounting of the tid it is prepared in; none for an awaiting tid, whose
/// report is all it keeps).
fn prepared_says(
    host: &str,
    tid: Tid,
    kept: Option<(u64, &Aggregate)>,
    p: Option<&PreparedReport>,
    steps: u64,
    aggregate: &Aggregate,
    digest: Option<u64>,
) -> Result<(), String> {
    let Some(p) = p.filter(|p| p.tid == tid) else {
        return Err(format!("host {host} is prepared in tid {tid} but offers no Prepared report of it"));
    };
    let what = if digest.is_some() { "the ledger's record" } else { "its journal" };
    if kept.is_some_and(|k| k != (p.steps, &p.aggregate)) || (p.steps, &p.aggregate) != (steps, aggregate) {
        return Err(format!(
            "host {host}'s Prepared of tid {tid} says {} steps (aggregate {}), {what} says {steps} (aggregate {})",
            p.steps,
            show(&p.aggregate),
            show(aggregate)
        ));
    }
    if let Some(d) = digest.filter(|d| *d != p.output_digest) {
        return Err(format!(
            "host {host}'s Prepared of tid {tid} has output digest {:#018x}, the ledger recorded {d:#018x}",
            p.output_digest
        ));
    }
    Ok(())
}

/// `{endpoint (count, hash), ...}` for operator messages.
fn show(a: &Aggregate) -> String {
    let parts: Vec<String> = a.0.iter().map(|(e, c)| format!("{e} {c}")).collect();
    format!("{{{}}}", parts.join(", "))
}
