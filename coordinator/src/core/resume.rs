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
            hello.journal.iter().find(|j| j.tid == tid).map(|j| (j.steps, j.aggregate.to_aggregate())).unwrap_or_default()
        };
        match fit(host, ledger, hello.resumable.as_ref(), journal) {
            Ok(r) => {
                plan.insert(host.clone(), r);
            }
            Err(why) => misfits.push(why),
        }
    }
    if misfits.is_empty() {
        Ok(plan)
    } else {
        Err(misfits.join("; "))
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
            let (steps, aggregate) = journal(o);
            if (steps, &aggregate) != (r.steps, &r.aggregate) {
                return Err(format!(
                    "host {host} ran {} steps of the open tid {o} (aggregate {}), but its journal holds {steps} (aggregate \
                     {})",
                    r.steps,
                    show(&r.aggregate),
                    show(&aggregate)
                ));
            }
            if r.state == HostTxnState::Prepared {
                prepared_says(host, o, r, r.prepared.as_ref(), r.steps, &r.aggregate, None)?;
            }
            let records = r.aggregate.0.values().map(|c| c.count).sum();
            Ok(HostResume::Open(HostProgress {
                steps: r.steps,
                live_steps: r.steps,
                last_step: 0,
                records,
                sum: r.aggregate.clone(),
                prepared: None,
            }))
        }
        HostTxnState::Prepared if r.tid == c && c > 0 => {
            let before = ledger.txns.range(..c).rev().find(|(_, t)| t.status == TxnStatus::Committed).map(|(t, _)| *t);
            if r.last_committed != before.unwrap_or(0) {
                return wrong(format!("is prepared in tid {c} after committing tid {}", r.last_committed));
            }
            let Some(rec) = ledger.txn(c).and_then(|t| t.hosts.get(host)) else {
                return wrong(format!("is prepared in tid {c}, of which the ledger keeps no record for this host"));
            };
            prepared_says(host, c, r, r.prepared.as_ref(), rec.steps, &rec.aggregate(), Some(rec.output_digest))?;
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

/// A prepared host's kept report must be of `tid`, say what the host ran,
/// and equal what the ledger (or the journal) expects.
fn prepared_says(
    host: &str,
    tid: Tid,
    r: &Resumable,
    p: Option<&PreparedReport>,
    steps: u64,
    aggregate: &Aggregate,
    digest: Option<u64>,
) -> Result<(), String> {
    let Some(p) = p.filter(|p| p.tid == tid) else {
        return Err(format!("host {host} is prepared in tid {tid} but offers no Prepared report of it"));
    };
    let what = if digest.is_some() { "the ledger's record" } else { "its journal" };
    if (p.steps, &p.aggregate) != (r.steps, &r.aggregate) || (p.steps, &p.aggregate) != (steps, aggregate) {
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
