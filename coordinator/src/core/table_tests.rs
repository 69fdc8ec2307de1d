//! Exhaustive transition-table test of the coordinator core (DESIGN
//! invariant 7: every phase × event pair has a defined outcome; an illegal
//! pair is an error, never ignored). docs/ARCHITECTURE.md, "Coordinator state
//! machine", is this table in prose.
//!
//! Each phase is reached by driving real events through the `Harness` from
//! one recorded history (ledger: tids 1 and 2 committed, 3 open; h0 journaled
//! tid 1 as steps 1-2 and tid 3 as step 3, h1 tid 1 as step 1 and tid 2 as
//! step 2; recovery restores checkpoint 0). The harness then holds proposals
//! (proposed, not yet durable), one event is fed, and the row pins the next
//! phase and the exact actions, rendered compactly by `show`:
//!
//! - `h0<-Cmd`: a command to a host; `accept#c h`, `reject#c`, `drop h#c`
//!   for streams; `propose Entry`; `note ...` for notices.
//! - `to(next, actions)`: exactly these actions, then phase `next`.
//! - `nothing()`: no action, and the phase is unchanged (equal, not just by
//!   name).
//! - `fails(recorded, text)`: the pipeline fails with a diagnosis whose
//!   summary contains `text`: `propose Fail(tid)` if the failure concerns the
//!   ledger's open tid (`recorded`), `Stop` to every connected host, the
//!   `Failed` notice, and the state notice.
//! - `fails_after(first, recorded, text)`: `first` (what the first of two
//!   reports did), then fails as above.
//! - `rejects(text)`: the stream is refused with an error containing `text`,
//!   nothing else changes.
//! - `na()`: only for `applied_pending` in a phase that has no proposal in
//!   flight (the shell reports `Applied` only for proposals); the runner
//!   checks that nothing is held.
//!
//! Events are named relative to the phase's context `T` (its tid) and to
//! host h0's last reported step `S`; h0 is the reporting host throughout.
//! `*_duplicate` and `*_by_both` feed two reports (h0 twice; h1 then h0, so
//! the second completes the phase) and pin what both together do.
//! Run with `LOCKSTEP_PRINT_TABLE=1` to print the observed table.

use std::collections::BTreeSet;

use super::tests::{agg, cfg, recorded, Harness};
use super::*;

/// What a phase's fixture leaves behind for the events to refer to.
struct Ctx {
    /// The tid the phase is about (the open or replayed tid, or the ledger's
    /// open tid where none is being driven).
    tid: Tid,
    /// The mode h0's steps are expected in.
    mode: Mode,
    /// h0's last reported (or journaled) step.
    last_step: u64,
    /// The Prepared that h0 and h1 would legitimately send for `tid`.
    prepared: PreparedReport,
    prepared_h1: PreparedReport,
    j0: Vec<JournalTid>,
    j1: Vec<JournalTid>,
}

const PHASES: &[&str] = &[
    "Joining",
    "Bumping",
    "BumpingContinue",
    "Restoring",
    // Replay of committed tids, each host at its own tid: both in tid 1;
    // h0 in tid 2 (the last committed) with h1 still in tid 1; h1 prepared
    // in tid 2 and waiting for h0, which is in tid 2 too.
    "Replaying",
    "ReplayingApart",
    "ReplayingLast",
    "Beginning",
    "OpenLive",
    "OpenReplay",
    "PreparingLive",
    // Commit pipeline (depth 3): tid 4 prepared with tid 5 opened; no host
    // has reported Prepared(4) yet, so h0's reports are about tid 4.
    "PipelinedLive",
    "PreparingReplay",
    "Committing",
    "Checkpointing",
    "RecordingCheckpoint",
    "Failed",
    "Stopped",
];

const EVENTS: &[&str] = &[
    "hello_h1_new",
    "hello_h0_replaces",
    "hello_unknown",
    "disconnected_current",
    "disconnected_stale",
    "step_live",
    "step_wrong_tid",
    "step_not_increasing",
    "step_replayed_matching",
    "step_replayed_diverging",
    "step_wrong_state",
    "prepared_right",
    "prepared_by_both",
    "prepared_wrong_tid",
    "prepared_duplicate",
    "prepared_miscounted",
    "committed_next",
    "committed_repeated",
    "committed_ahead",
    "checkpoint_done_right",
    "checkpoint_done_by_both",
    "checkpoint_done_wrong",
    "restored_right",
    "restored_by_both",
    "restored_wrong",
    "host_error",
    "heartbeat",
    "applied_pending",
    "applied_unexpected",
    "applied_rejected",
    "applied_diverging",
    "propose_failed",
    "tick_early",
    "tick_interval",
    "tick_deadline",
    "admin_checkpoint",
    "admin_stop",
    "admin_resume",
];

fn prep(tid: Tid, steps: u64, a: Aggregate, digest: u64) -> PreparedReport {
    PreparedReport { tid, steps, aggregate: a, output_digest: digest, output_count: 0 }
}

fn replayed(h: &mut Harness, host: &str, tid: Tid, step: u64, a: Aggregate) {
    h.step(host, tid, step, a.clone(), Some(a));
}

fn committed_by_both(h: &mut Harness, tid: Tid) {
    for host in ["h0", "h1"] {
        h.ev(Event::Committed { host: host.into(), tid });
    }
}

/// Drives the recorded history to `name`. Every step is a real event; the
/// phases are visited in the order a recovery and two commits visit them.
fn reach(name: &str) -> (Harness, Ctx) {
    let (l, j0, j1) = recorded();
    let config = if name == "PipelinedLive" { CoreConfig { pipeline_depth: 3, ..cfg() } } else { cfg() };
    let mut h = Harness::new(config, l);
    let mut ctx = Ctx {
        tid: 3,
        mode: Mode::Live,
        last_step: 3,
        prepared: prep(3, 0, agg(&[]), 0),
        prepared_h1: prep(3, 0, agg(&[]), 0),
        j0,
        j1,
    };
    let done = |mut h: Harness, ctx: Ctx| {
        assert!(h.failure().is_none() || name == "Failed", "{name}: {:?}", h.failure());
        h.hold = true;
        h.take_sent();
        h.notices.clear();
        (h, ctx)
    };
    // Joining: h0 connected, h1 not yet.
    if name == "BumpingContinue" {
        // Both kept a state that fits the ledger (1, 2 committed, 3 open):
        // h0 is in tid 3 with its journaled step, h1 is prepared in tid 2
        // and never got Commit(2).
        let (h0, h1) = kept_states();
        h.hello_with("h0", ctx.j0.clone(), vec![], Some(h0));
        h.hold = true;
        h.hello_with("h1", ctx.j1.clone(), vec![], Some(h1));
        assert_eq!(h.core.phase(), &Phase::Bumping { epoch: 2 });
        return done(h, ctx);
    }
    h.hello("h0", ctx.j0.clone(), vec![]);
    if name == "Joining" {
        return done(h, ctx);
    }
    if name == "Bumping" {
        h.hold = true;
        h.hello("h1", ctx.j1.clone(), vec![]);
        assert_eq!(h.core.phase(), &Phase::Bumping { epoch: 2 });
        return done(h, ctx);
    }
    h.hello("h1", ctx.j1.clone(), vec![]);
    assert_eq!(h.core.phase(), &Phase::Restoring { checkpoint: 0 });
    if name == "Restoring" {
        return done(h, ctx);
    }
    h.restored_all(0);
    replayed(&mut h, "h0", 1, 1, agg(&[("gen", 1, 5)]));
    replayed(&mut h, "h0", 1, 2, agg(&[("gen", 1, 15)]));
    replayed(&mut h, "h1", 1, 1, agg(&[("gen", 1, 10)]));
    if name == "Replaying" {
        ctx = Ctx {
            tid: 1,
            mode: Mode::Replay,
            last_step: 2,
            prepared: prep(1, 2, agg(&[("gen", 2, 20)]), 100),
            prepared_h1: prep(1, 1, agg(&[("gen", 1, 10)]), 101),
            ..ctx
        };
        return done(h, ctx);
    }
    // h0's replay of tid 1 verifies: it alone gets Commit(1) and tid 2.
    h.prepared("h0", 1, 2, agg(&[("gen", 2, 20)]), 100);
    if name == "ReplayingApart" {
        // h0 replays tid 2 (the last committed tid; it journaled no step of
        // it), h1 is still in tid 1.
        ctx = Ctx {
            tid: 2,
            mode: Mode::Replay,
            last_step: 0,
            prepared: prep(2, 0, agg(&[]), 0),
            prepared_h1: prep(1, 1, agg(&[("gen", 1, 10)]), 101),
            ..ctx
        };
        return done(h, ctx);
    }
    h.prepared("h1", 1, 1, agg(&[("gen", 1, 10)]), 101);
    committed_by_both(&mut h, 1);
    replayed(&mut h, "h1", 2, 2, agg(&[("gen", 1, 10)]));
    h.prepared("h1", 2, 1, agg(&[("gen", 1, 10)]), 102);
    if name == "ReplayingLast" {
        // h1 is prepared in the last committed tid 2 and waits for h0,
        // which has yet to report it.
        ctx = Ctx {
            tid: 2,
            mode: Mode::Replay,
            last_step: 0,
            prepared: prep(2, 0, agg(&[]), 0),
            prepared_h1: prep(2, 1, agg(&[("gen", 1, 10)]), 102),
            ..ctx
        };
        return done(h, ctx);
    }
    h.prepared("h0", 2, 0, agg(&[]), 0);
    committed_by_both(&mut h, 2);
    // The open last transaction (invariant 4): h0 replays its journaled step.
    replayed(&mut h, "h0", 3, 3, agg(&[("gen", 5, 5)]));
    ctx = Ctx {
        tid: 3,
        mode: Mode::Replay,
        last_step: 3,
        prepared: prep(3, 1, agg(&[("gen", 5, 5)]), 7),
        prepared_h1: prep(3, 0, agg(&[]), 8),
        ..ctx
    };
    if name == "OpenReplay" {
        return done(h, ctx);
    }
    h.now = 100;
    h.ev(Event::Tick);
    if name == "PreparingReplay" {
        return done(h, ctx);
    }
    h.prepared("h0", 3, 1, agg(&[("gen", 5, 5)]), 7);
    h.prepared("h1", 3, 0, agg(&[]), 8);
    // Commit(3) went out; the hosts' Committed(3) is still in flight.
    h.step("h0", 4, 4, agg(&[("gen", 1, 1)]), None);
    ctx = Ctx {
        tid: 4,
        mode: Mode::Live,
        last_step: 4,
        prepared: prep(4, 1, agg(&[("gen", 1, 1)]), 9),
        prepared_h1: prep(4, 0, agg(&[]), 10),
        ..ctx
    };
    match name {
        "OpenLive" => return done(h, ctx),
        "Failed" => {
            h.ev(Event::HostError { host: "h1".into(), kind: "engine".into(), message: "disk full".into(), tid: 4 });
            return done(h, ctx);
        }
        "Stopped" => {
            h.ev(Event::AdminStop { reason: "maintenance".into() });
            return done(h, ctx);
        }
        _ => {}
    }
    h.now = 200;
    h.ev(Event::Tick);
    if name == "PreparingLive" {
        return done(h, ctx);
    }
    if name == "PipelinedLive" {
        assert_eq!(h.take_sent().last().map(|(_, c)| c.clone()), Some(Cmd::Prepare { tid: 4, next: Some(Start::live(5)) }));
        return done(h, ctx);
    }
    if name == "Committing" {
        h.hold = true;
        h.prepared("h0", 4, 1, agg(&[("gen", 1, 1)]), 9);
        h.prepared("h1", 4, 0, agg(&[]), 10);
        return done(h, ctx);
    }
    h.ev(Event::AdminCheckpoint);
    h.prepared("h0", 4, 1, agg(&[("gen", 1, 1)]), 9);
    h.prepared("h1", 4, 0, agg(&[]), 10);
    if name == "Checkpointing" {
        return done(h, ctx);
    }
    h.hold = true;
    h.ev(Event::CheckpointDone { host: "h0".into(), tid: 4 });
    h.ev(Event::CheckpointDone { host: "h1".into(), tid: 4 });
    if name == "RecordingCheckpoint" {
        return done(h, ctx);
    }
    h.apply_held();
    assert_eq!(name, "Beginning", "unknown phase");
    ctx = Ctx { tid: 5, prepared: prep(5, 0, agg(&[]), 0), prepared_h1: prep(5, 0, agg(&[]), 0), ..ctx };
    done(h, ctx)
}

/// What h0 and h1 kept from a lost coordinator in the recorded history: h0
/// open in tid 3 with its one journaled step, h1 prepared in the committed
/// tid 2 exactly as the ledger recorded it.
pub(crate) fn kept_states() -> (Resumable, Resumable) {
    let h0 = Resumable {
        last_committed: 2,
        state: HostTxnState::OpenLive,
        tid: 3,
        steps: 1,
        aggregate: agg(&[("gen", 5, 5)]),
        prepared: None,
        awaiting: vec![],
    };
    let a1 = agg(&[("gen", 1, 10)]);
    let h1 = Resumable {
        last_committed: 1,
        state: HostTxnState::Prepared,
        tid: 2,
        steps: 1,
        aggregate: a1.clone(),
        prepared: Some(prep(2, 1, a1, 102)),
        awaiting: vec![],
    };
    (h0, h1)
}

fn report(h: &mut Harness, r: StepReport) -> Vec<Action> {
    h.ev(Event::Step { host: "h0".into(), report: r })
}

/// Feeds the named event; returns the core's actions (proposals are held).
fn fire(h: &mut Harness, c: &Ctx, event: &str) -> Vec<Action> {
    let (t, s) = (c.tid, c.last_step);
    let hello = |h: &mut Harness, host: &str, journal: &[JournalTid]| h.hello(host, journal.to_vec(), vec![]);
    let live = |tid, step| StepReport {
        tid,
        step,
        checksums: agg(&[("gen", 1, 1)]),
        journaled: None,
        state: HostTxnState::OpenLive,
        mode: Mode::Live,
    };
    let replay = |step, got: u64| StepReport {
        tid: t,
        step,
        checksums: agg(&[("gen", 1, got)]),
        journaled: Some(agg(&[("gen", 1, 1)])),
        state: HostTxnState::OpenReplay,
        mode: Mode::Replay,
    };
    let h0_committed = h.core.hosts()["h0"].last_committed;
    let base = h.now;
    match event {
        "hello_h1_new" => hello(h, "h1", &c.j1),
        "hello_h0_replaces" => hello(h, "h0", &c.j0),
        "hello_unknown" => {
            let hello = Hello {
                protocol_version: lockstep_proto::PROTOCOL_VERSION,
                host_id: "h9".into(),
                cluster_id: "c1".into(),
                highest_epoch: 0,
                checkpoints: vec![],
                journal: vec![],
                last_step: 0,
                ingest_addr: String::new(),
                data_id: 0,
                resumable: None,
            };
            h.ev(Event::Hello { conn: 77, hello })
        }
        "disconnected_current" => {
            let conn = h.conns["h0"];
            h.ev(Event::Disconnected { conn, host: "h0".into(), reason: "stream reset".into() })
        }
        "disconnected_stale" => h.ev(Event::Disconnected { conn: 99, host: "h0".into(), reason: "replaced".into() }),
        "step_live" => report(h, live(t, s + 1)),
        "step_wrong_tid" => report(h, live(11, s + 1)),
        "step_not_increasing" => match c.mode {
            Mode::Live => report(h, live(t, s)),
            Mode::Replay => report(h, replay(s, 1)),
        },
        "step_replayed_matching" => report(h, replay(s + 1, 1)),
        "step_replayed_diverging" => report(h, replay(s + 1, 2)),
        "step_wrong_state" => report(h, StepReport { state: HostTxnState::Prepared, ..live(t, s + 1) }),
        "prepared_right" => h.ev(Event::Prepared { host: "h0".into(), report: c.prepared.clone() }),
        // h1 then h0: the row pins what both together do (h0 completes).
        "prepared_by_both" => {
            let mut a = h.ev(Event::Prepared { host: "h1".into(), report: c.prepared_h1.clone() });
            a.extend(h.ev(Event::Prepared { host: "h0".into(), report: c.prepared.clone() }));
            a
        }
        "prepared_wrong_tid" => h.ev(Event::Prepared { host: "h0".into(), report: PreparedReport { tid: 11, ..c.prepared.clone() } }),
        // The same Prepared twice; the row pins what both together do.
        "prepared_duplicate" => {
            let mut a = h.ev(Event::Prepared { host: "h0".into(), report: c.prepared.clone() });
            a.extend(h.ev(Event::Prepared { host: "h0".into(), report: c.prepared.clone() }));
            a
        }
        "prepared_miscounted" => {
            let r = PreparedReport { steps: c.prepared.steps + 1, ..c.prepared.clone() };
            h.ev(Event::Prepared { host: "h0".into(), report: r })
        }
        "committed_next" => h.ev(Event::Committed { host: "h0".into(), tid: h0_committed + 1 }),
        "committed_repeated" => h.ev(Event::Committed { host: "h0".into(), tid: h0_committed }),
        "committed_ahead" => {
            let tid = h.core.ledger().last_committed + 1;
            h.ev(Event::Committed { host: "h0".into(), tid })
        }
        "checkpoint_done_right" => h.ev(Event::CheckpointDone { host: "h0".into(), tid: t }),
        "checkpoint_done_by_both" => {
            let mut a = h.ev(Event::CheckpointDone { host: "h1".into(), tid: t });
            a.extend(h.ev(Event::CheckpointDone { host: "h0".into(), tid: t }));
            a
        }
        "checkpoint_done_wrong" => h.ev(Event::CheckpointDone { host: "h0".into(), tid: 11 }),
        "restored_right" => h.ev(Event::Restored { host: "h0".into(), checkpoint: 0 }),
        "restored_by_both" => {
            let mut a = h.ev(Event::Restored { host: "h1".into(), checkpoint: 0 });
            a.extend(h.ev(Event::Restored { host: "h0".into(), checkpoint: 0 }));
            a
        }
        "restored_wrong" => h.ev(Event::Restored { host: "h0".into(), checkpoint: 7 }),
        "host_error" => h.ev(Event::HostError { host: "h0".into(), kind: "engine".into(), message: "boom".into(), tid: t }),
        "heartbeat" => h.ev(Event::Heartbeat { host: "h0".into() }),
        "applied_pending" => h.apply_held(),
        "applied_unexpected" => {
            // Another writer (a second coordinator) bumped the epoch.
            let entry = LedgerEntry::NewEpoch { epoch: h.shadow.epoch + 5 };
            let result = h.shadow.apply(&entry);
            assert_eq!(result, Ok(()));
            h.ev(Event::Applied { entry, result })
        }
        "applied_rejected" => {
            let entry = LedgerEntry::Begin { tid: 1 };
            let result = h.shadow.clone().apply(&entry);
            assert!(result.is_err());
            h.ev(Event::Applied { entry, result })
        }
        "applied_diverging" => {
            // The shell reports success for an entry the core's copy rejects.
            h.ev(Event::Applied { entry: LedgerEntry::Begin { tid: 1 }, result: Ok(()) })
        }
        "propose_failed" => h.ev(Event::ProposeFailed { entry: LedgerEntry::Begin { tid: 99 }, error: "disk full".into() }),
        "tick_early" => h.ev(Event::Tick),
        "tick_interval" => {
            h.now = base + 100;
            h.ev(Event::Tick)
        }
        "tick_deadline" => {
            h.now = base + 1001;
            h.ev(Event::Tick)
        }
        "admin_checkpoint" => h.ev(Event::AdminCheckpoint),
        "admin_stop" => h.ev(Event::AdminStop { reason: "maintenance".into() }),
        "admin_resume" => h.ev(Event::AdminResume),
        other => panic!("unknown event {other}"),
    }
}

// ------------------------------------------------------------- rendering

fn show_start(s: &Start) -> String {
    match (s.mode, s.prepare) {
        (Mode::Live, false) => format!("Live{}", s.tid),
        (Mode::Replay, false) => format!("ReplayOpen{}", s.tid),
        (Mode::Replay, true) => format!("ReplayCommitted{}", s.tid),
        (Mode::Live, true) => format!("LivePrepared{}?", s.tid),
    }
}

fn show_cmd(c: &Cmd) -> String {
    match c {
        Cmd::Start(s) => format!("Start({})", show_start(s)),
        Cmd::Prepare { tid, next: None } => format!("Prepare({tid})"),
        Cmd::Prepare { tid, next: Some(n) } => format!("Prepare({tid},next {})", n.tid),
        Cmd::Commit { tid, next: None } => format!("Commit({tid})"),
        Cmd::Commit { tid, next: Some(s) } => format!("Commit({tid},{})", show_start(s)),
        Cmd::Checkpoint { tid } => format!("Checkpoint({tid})"),
        Cmd::CheckpointComplete { tid } => format!("CheckpointComplete({tid})"),
        Cmd::Restore { checkpoint } => format!("Restore({checkpoint})"),
        Cmd::Stop { reason } => {
            assert!(!reason.is_empty(), "Stop says why");
            "Stop".into()
        }
    }
}

fn show_entry(e: &LedgerEntry) -> String {
    match e {
        LedgerEntry::Commit { tid, begin_next: Some(n), .. } => format!("Commit({tid},begin {n})"),
        other => entry_name(other),
    }
}

fn show(a: &Action) -> String {
    match a {
        // The harness checks that every command carries the ledger's epoch.
        Action::Send { host, cmd, .. } => format!("{host}<-{}", show_cmd(cmd)),
        Action::Accept { conn, host } => format!("accept#{conn} {host}"),
        Action::Reject { conn, error } => {
            assert!(!error.is_empty());
            format!("reject#{conn}")
        }
        Action::Drop { conn, host, why } => {
            assert!(!why.is_empty(), "a drop says why");
            format!("drop {host}#{conn}")
        }
        Action::Propose(e) => format!("propose {}", show_entry(e)),
        Action::Notice(n) => match n {
            Notice::PipelineState { from, to, why } => {
                assert!(!why.is_empty());
                format!("note {from}->{to}")
            }
            Notice::HostJoined { host } => format!("note joined {host}"),
            Notice::HostLost { host, why } => {
                assert!(!why.is_empty());
                format!("note lost {host}")
            }
            Notice::Committed { tid, replayed, records } => format!("note committed {tid} replayed={replayed} records={records}"),
            Notice::CheckpointComplete { tid } => format!("note checkpoint {tid}"),
            Notice::Recovering { epoch, checkpoint, replay_tids, open_tid } => {
                format!("note recovering epoch {epoch} from {checkpoint} replay {replay_tids:?} open {open_tid:?}")
            }
            Notice::Recovery(r) => {
                assert!(!r.why.is_empty(), "a recovery path says why");
                format!("note {} epoch {}", r.path.as_str(), r.epoch)
            }
            Notice::Failed(_) => "note Failed".into(),
        },
    }
}

fn show_phase(p: &Phase) -> String {
    match p {
        Phase::Joining => "Joining".into(),
        Phase::Bumping { epoch } => format!("Bumping({epoch})"),
        Phase::Restoring { checkpoint } => format!("Restoring({checkpoint})"),
        // Each host's tid, then the queue with how many hosts passed each
        // tid: `Replaying(h0@2 h1@1; 1+1 2)`.
        Phase::Replaying { tid, queue, at, .. } => {
            assert_eq!(queue.front().map(|q| q.tid), Some(*tid), "tid is the queue's front");
            let at: Vec<String> = at.iter().map(|(h, t)| format!("{h}@{t}")).collect();
            let queue: Vec<String> =
                queue.iter().map(|q| if q.passed == 0 { q.tid.to_string() } else { format!("{}+{}", q.tid, q.passed) }).collect();
            format!("Replaying({}; {})", at.join(" "), queue.join(" "))
        }
        Phase::Running(t) => match t {
            Txn::Beginning { tid } => format!("Beginning({tid})"),
            Txn::Open { tid, mode, .. } => format!("Open({tid},{mode:?})"),
            Txn::Preparing { tid, mode } => format!("Preparing({tid},{mode:?})"),
            Txn::Committing { tid, checkpoint_after: false } => format!("Committing({tid})"),
            Txn::Committing { tid, checkpoint_after: true } => format!("Committing({tid},+checkpoint)"),
            Txn::Checkpointing { tid } => format!("Checkpointing({tid})"),
            Txn::RecordingCheckpoint { tid } => format!("RecordingCheckpoint({tid})"),
        },
        Phase::Failed(_) => "Failed".into(),
        Phase::Stopped { .. } => "Stopped".into(),
    }
}

// ------------------------------------------------------------- the table

enum Out {
    To(&'static str, Vec<&'static str>),
    Nothing,
    Fails(Option<Tid>, &'static str),
    /// These actions first (the first of two reports succeeded), then the
    /// failure as in `Fails`.
    FailsAfter(Vec<&'static str>, Option<Tid>, &'static str),
    Rejects(&'static str),
    NotApplicable,
}

fn to(next: &'static str, actions: &[&'static str]) -> Out {
    Out::To(next, actions.to_vec())
}
fn nothing() -> Out {
    Out::Nothing
}
fn fails(recorded: Option<Tid>, text: &'static str) -> Out {
    Out::Fails(recorded, text)
}
fn fails_after(first: &[&'static str], recorded: Option<Tid>, text: &'static str) -> Out {
    Out::FailsAfter(first.to_vec(), recorded, text)
}
fn rejects(text: &'static str) -> Out {
    Out::Rejects(text)
}
fn na() -> Out {
    Out::NotApplicable
}

#[rustfmt::skip]
fn table() -> Vec<(&'static str, &'static str, Out)> {
    vec![
        // ---- Joining
        ("Joining", "hello_h1_new", to("Bumping(2)", &["accept#2 h1", "note joined h1", "propose NewEpoch(2)"])),
        ("Joining", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#2 h0", "note joined h0"])),
        ("Joining", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("Joining", "disconnected_current", to("Joining", &["note lost h0"])),
        ("Joining", "disconnected_stale", nothing()),
        ("Joining", "step_live", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Joining", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Joining", "step_not_increasing", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Joining", "step_replayed_matching", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Joining", "step_replayed_diverging", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Joining", "step_wrong_state", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Joining", "prepared_right", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Joining", "prepared_by_both", fails(Some(3), "protocol violation by host h1: Prepared arrived but no Prepare is outstanding")),
        ("Joining", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Joining", "prepared_duplicate", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Joining", "prepared_miscounted", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Joining", "committed_next", fails(None, "protocol violation by host h0: host committed tid 1 but this stream was sent Commit only up to tid 0")),
        ("Joining", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("Joining", "committed_ahead", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("Joining", "checkpoint_done_right", fails(Some(3), "protocol violation by host h0: CheckpointDone(3) unexpected")),
        ("Joining", "checkpoint_done_by_both", fails(Some(3), "protocol violation by host h1: CheckpointDone(3) unexpected")),
        ("Joining", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("Joining", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("Joining", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("Joining", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("Joining", "host_error", fails(Some(3), "host h0 reported an error (kind \"engine\"): boom")),
        ("Joining", "heartbeat", nothing()),
        ("Joining", "applied_pending", na()),
        ("Joining", "applied_unexpected", nothing()),
        ("Joining", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("Joining", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("Joining", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("Joining", "tick_early", nothing()),
        ("Joining", "tick_interval", nothing()),
        ("Joining", "tick_deadline", nothing()),
        ("Joining", "admin_checkpoint", nothing()),
        ("Joining", "admin_stop", to("Stopped", &["h0<-Stop", "note Joining->Stopped"])),
        ("Joining", "admin_resume", nothing()),
        // ---- Bumping
        ("Bumping", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "drop h0#1", "drop h1#3"])),
        ("Bumping", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "drop h0#3", "drop h1#2"])),
        ("Bumping", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("Bumping", "disconnected_current", to("Joining", &["note lost h0", "drop h1#2"])),
        ("Bumping", "disconnected_stale", nothing()),
        ("Bumping", "step_live", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Bumping", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Bumping", "step_not_increasing", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Bumping", "step_replayed_matching", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Bumping", "step_replayed_diverging", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Bumping", "step_wrong_state", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Bumping", "prepared_right", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Bumping", "prepared_by_both", fails(Some(3), "protocol violation by host h1: Prepared arrived but no Prepare is outstanding")),
        ("Bumping", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Bumping", "prepared_duplicate", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Bumping", "prepared_miscounted", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Bumping", "committed_next", fails(None, "protocol violation by host h0: host committed tid 1 but this stream was sent Commit only up to tid 0")),
        ("Bumping", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("Bumping", "committed_ahead", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("Bumping", "checkpoint_done_right", fails(Some(3), "protocol violation by host h0: CheckpointDone(3) unexpected")),
        ("Bumping", "checkpoint_done_by_both", fails(Some(3), "protocol violation by host h1: CheckpointDone(3) unexpected")),
        ("Bumping", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("Bumping", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("Bumping", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("Bumping", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("Bumping", "host_error", fails(Some(3), "host h0 reported an error (kind \"engine\"): boom")),
        ("Bumping", "heartbeat", nothing()),
        ("Bumping", "applied_pending", to("Restoring(0)", &["note replay epoch 2", "h0<-Restore(0)", "h1<-Restore(0)", "note Joining->Restoring"])),
        ("Bumping", "applied_unexpected", nothing()),
        ("Bumping", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("Bumping", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("Bumping", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("Bumping", "tick_early", nothing()),
        ("Bumping", "tick_interval", nothing()),
        ("Bumping", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "drop h1#2"])),
        ("Bumping", "admin_checkpoint", nothing()),
        ("Bumping", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Joining->Stopped"])),
        ("Bumping", "admin_resume", nothing()),
        // ---- BumpingContinue
        ("BumpingContinue", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "drop h0#1", "drop h1#3"])),
        ("BumpingContinue", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "drop h0#3", "drop h1#2"])),
        ("BumpingContinue", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("BumpingContinue", "disconnected_current", to("Joining", &["note lost h0", "drop h1#2"])),
        ("BumpingContinue", "disconnected_stale", nothing()),
        ("BumpingContinue", "step_live", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("BumpingContinue", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("BumpingContinue", "step_not_increasing", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("BumpingContinue", "step_replayed_matching", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("BumpingContinue", "step_replayed_diverging", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("BumpingContinue", "step_wrong_state", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("BumpingContinue", "prepared_right", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("BumpingContinue", "prepared_by_both", fails(Some(3), "protocol violation by host h1: Prepared arrived but no Prepare is outstanding")),
        ("BumpingContinue", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("BumpingContinue", "prepared_duplicate", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("BumpingContinue", "prepared_miscounted", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("BumpingContinue", "committed_next", fails(None, "protocol violation by host h0: host committed tid 1 but this stream was sent Commit only up to tid 0")),
        ("BumpingContinue", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("BumpingContinue", "committed_ahead", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("BumpingContinue", "checkpoint_done_right", fails(Some(3), "protocol violation by host h0: CheckpointDone(3) unexpected")),
        ("BumpingContinue", "checkpoint_done_by_both", fails(Some(3), "protocol violation by host h1: CheckpointDone(3) unexpected")),
        ("BumpingContinue", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("BumpingContinue", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("BumpingContinue", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("BumpingContinue", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("BumpingContinue", "host_error", fails(Some(3), "host h0 reported an error (kind \"engine\"): boom")),
        ("BumpingContinue", "heartbeat", nothing()),
        ("BumpingContinue", "applied_pending", to("Preparing(3,Live)", &["note continue epoch 2", "h1<-Commit(2,Live3)", "note Joining->Running", "h0<-Prepare(3)", "h1<-Prepare(3)"])),
        ("BumpingContinue", "applied_unexpected", nothing()),
        ("BumpingContinue", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("BumpingContinue", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("BumpingContinue", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("BumpingContinue", "tick_early", nothing()),
        ("BumpingContinue", "tick_interval", nothing()),
        ("BumpingContinue", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "drop h1#2"])),
        ("BumpingContinue", "admin_checkpoint", nothing()),
        ("BumpingContinue", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Joining->Stopped"])),
        ("BumpingContinue", "admin_resume", nothing()),
        // ---- Restoring
        ("Restoring", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Restoring->Joining", "drop h0#1", "drop h1#3"])),
        ("Restoring", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Restoring->Joining", "drop h0#3", "drop h1#2"])),
        ("Restoring", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("Restoring", "disconnected_current", to("Joining", &["note lost h0", "note Restoring->Joining", "drop h1#2"])),
        ("Restoring", "disconnected_stale", nothing()),
        ("Restoring", "step_live", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Restoring", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Restoring", "step_not_increasing", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Restoring", "step_replayed_matching", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Restoring", "step_replayed_diverging", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Restoring", "step_wrong_state", fails(Some(3), "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Restoring", "prepared_right", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Restoring", "prepared_by_both", fails(Some(3), "protocol violation by host h1: Prepared arrived but no Prepare is outstanding")),
        ("Restoring", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Restoring", "prepared_duplicate", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Restoring", "prepared_miscounted", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Restoring", "committed_next", fails(None, "protocol violation by host h0: host committed tid 1 but this stream was sent Commit only up to tid 0")),
        ("Restoring", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("Restoring", "committed_ahead", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("Restoring", "checkpoint_done_right", fails(Some(3), "protocol violation by host h0: CheckpointDone(3) unexpected")),
        ("Restoring", "checkpoint_done_by_both", fails(Some(3), "protocol violation by host h1: CheckpointDone(3) unexpected")),
        ("Restoring", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("Restoring", "restored_right", nothing()),
        ("Restoring", "restored_by_both", to("Replaying(h0@1 h1@1; 1 2)", &["note recovering epoch 2 from 0 replay [1, 2] open Some(3)", "h0<-Start(ReplayCommitted1)", "h1<-Start(ReplayCommitted1)"])),
        ("Restoring", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("Restoring", "host_error", fails(Some(3), "host h0 reported an error (kind \"engine\"): boom")),
        ("Restoring", "heartbeat", nothing()),
        ("Restoring", "applied_pending", na()),
        ("Restoring", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("Restoring", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("Restoring", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("Restoring", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("Restoring", "tick_early", nothing()),
        ("Restoring", "tick_interval", nothing()),
        ("Restoring", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Restoring->Joining", "drop h1#2"])),
        ("Restoring", "admin_checkpoint", nothing()),
        ("Restoring", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Restoring->Stopped"])),
        ("Restoring", "admin_resume", nothing()),
        // ---- Replaying
        ("Replaying", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Replaying->Joining", "drop h0#1", "drop h1#3"])),
        ("Replaying", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Replaying->Joining", "drop h0#3", "drop h1#2"])),
        ("Replaying", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("Replaying", "disconnected_current", to("Joining", &["note lost h0", "note Replaying->Joining", "drop h1#2"])),
        ("Replaying", "disconnected_stale", nothing()),
        ("Replaying", "step_live", fails(None, "protocol violation by host h0: host reports state OpenLive in mode Live")),
        ("Replaying", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported for tid 11 while tid 1 is open")),
        ("Replaying", "step_not_increasing", fails(None, "protocol violation by host h0: step numbers must strictly increase")),
        ("Replaying", "step_replayed_matching", nothing()),
        ("Replaying", "step_replayed_diverging", fails(None, "replay diverged from the journal: the replayed step ingested different input than was recorded")),
        ("Replaying", "step_wrong_state", fails(None, "protocol violation by host h0: host reports state Prepared in mode Live")),
        ("Replaying", "prepared_right", to("Replaying(h0@2 h1@1; 1+1 2)", &["h0<-Commit(1,ReplayCommitted2)"])),
        ("Replaying", "prepared_by_both", to("Replaying(h0@2 h1@2; 2)", &["h1<-Commit(1,ReplayCommitted2)", "h0<-Commit(1,ReplayCommitted2)", "note committed 1 replayed=true records=3"])),
        ("Replaying", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared for tid 11 while this host replays tid 1")),
        ("Replaying", "prepared_duplicate", fails_after(&["h0<-Commit(1,ReplayCommitted2)"], None, "protocol violation by host h0: Prepared for tid 1 while this host replays tid 2")),
        ("Replaying", "prepared_miscounted", fails(None, "host prepared 3 steps but reported 2 StepDone for this tid")),
        ("Replaying", "committed_next", fails(None, "protocol violation by host h0: host committed tid 1 but this stream was sent Commit only up to tid 0")),
        ("Replaying", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("Replaying", "committed_ahead", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("Replaying", "checkpoint_done_right", fails(None, "protocol violation by host h0: CheckpointDone(1) unexpected")),
        ("Replaying", "checkpoint_done_by_both", fails(None, "protocol violation by host h1: CheckpointDone(1) unexpected")),
        ("Replaying", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("Replaying", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("Replaying", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("Replaying", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("Replaying", "host_error", fails(None, "host h0 reported an error (kind \"engine\"): boom")),
        ("Replaying", "heartbeat", nothing()),
        ("Replaying", "applied_pending", na()),
        ("Replaying", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("Replaying", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("Replaying", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("Replaying", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("Replaying", "tick_early", nothing()),
        ("Replaying", "tick_interval", nothing()),
        ("Replaying", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Replaying->Joining", "drop h1#2"])),
        ("Replaying", "admin_checkpoint", nothing()),
        ("Replaying", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Replaying->Stopped"])),
        ("Replaying", "admin_resume", nothing()),
        // ---- ReplayingApart
        ("ReplayingApart", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Replaying->Joining", "drop h0#1", "drop h1#3"])),
        ("ReplayingApart", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Replaying->Joining", "drop h0#3", "drop h1#2"])),
        ("ReplayingApart", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("ReplayingApart", "disconnected_current", to("Joining", &["note lost h0", "note Replaying->Joining", "drop h1#2"])),
        ("ReplayingApart", "disconnected_stale", nothing()),
        ("ReplayingApart", "step_live", fails(None, "protocol violation by host h0: host reports state OpenLive in mode Live")),
        ("ReplayingApart", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported for tid 11 while tid 2 is open")),
        ("ReplayingApart", "step_not_increasing", fails(None, "protocol violation by host h0: step numbers must strictly increase")),
        ("ReplayingApart", "step_replayed_matching", nothing()),
        ("ReplayingApart", "step_replayed_diverging", fails(None, "replay diverged from the journal: the replayed step ingested different input than was recorded")),
        ("ReplayingApart", "step_wrong_state", fails(None, "protocol violation by host h0: host reports state Prepared in mode Live")),
        ("ReplayingApart", "prepared_right", to("Replaying(h0@2 h1@1; 1+1 2+1)", &[])),
        ("ReplayingApart", "prepared_by_both", to("Replaying(h0@2 h1@2; 2+1)", &["h1<-Commit(1,ReplayCommitted2)", "note committed 1 replayed=true records=3"])),
        ("ReplayingApart", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared for tid 11 while this host replays tid 2")),
        ("ReplayingApart", "prepared_duplicate", fails(None, "protocol violation by host h0: Prepared twice for the same tid")),
        ("ReplayingApart", "prepared_miscounted", fails(None, "host prepared 1 steps but reported 0 StepDone for this tid")),
        ("ReplayingApart", "committed_next", nothing()),
        ("ReplayingApart", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("ReplayingApart", "committed_ahead", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("ReplayingApart", "checkpoint_done_right", fails(None, "protocol violation by host h0: CheckpointDone(2) unexpected")),
        ("ReplayingApart", "checkpoint_done_by_both", fails(None, "protocol violation by host h1: CheckpointDone(2) unexpected")),
        ("ReplayingApart", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("ReplayingApart", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("ReplayingApart", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("ReplayingApart", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("ReplayingApart", "host_error", fails(None, "host h0 reported an error (kind \"engine\"): boom")),
        ("ReplayingApart", "heartbeat", nothing()),
        ("ReplayingApart", "applied_pending", na()),
        ("ReplayingApart", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("ReplayingApart", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("ReplayingApart", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("ReplayingApart", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("ReplayingApart", "tick_early", nothing()),
        ("ReplayingApart", "tick_interval", nothing()),
        ("ReplayingApart", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Replaying->Joining", "drop h1#2"])),
        ("ReplayingApart", "admin_checkpoint", nothing()),
        ("ReplayingApart", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Replaying->Stopped"])),
        ("ReplayingApart", "admin_resume", nothing()),
        // ---- ReplayingLast
        ("ReplayingLast", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Replaying->Joining", "drop h0#1", "drop h1#3"])),
        ("ReplayingLast", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Replaying->Joining", "drop h0#3", "drop h1#2"])),
        ("ReplayingLast", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("ReplayingLast", "disconnected_current", to("Joining", &["note lost h0", "note Replaying->Joining", "drop h1#2"])),
        ("ReplayingLast", "disconnected_stale", nothing()),
        ("ReplayingLast", "step_live", fails(None, "protocol violation by host h0: host reports state OpenLive in mode Live")),
        ("ReplayingLast", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported for tid 11 while tid 2 is open")),
        ("ReplayingLast", "step_not_increasing", fails(None, "protocol violation by host h0: step numbers must strictly increase")),
        ("ReplayingLast", "step_replayed_matching", nothing()),
        ("ReplayingLast", "step_replayed_diverging", fails(None, "replay diverged from the journal: the replayed step ingested different input than was recorded")),
        ("ReplayingLast", "step_wrong_state", fails(None, "protocol violation by host h0: host reports state Prepared in mode Live")),
        ("ReplayingLast", "prepared_right", to("Open(3,Replay)", &["note committed 2 replayed=true records=1", "h0<-Commit(2,ReplayOpen3)", "h1<-Commit(2,ReplayOpen3)", "note Replaying->Running"])),
        ("ReplayingLast", "prepared_by_both", fails(None, "protocol violation by host h1: Prepared twice for the same tid")),
        ("ReplayingLast", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared for tid 11 while this host replays tid 2")),
        ("ReplayingLast", "prepared_duplicate", fails_after(&["note committed 2 replayed=true records=1", "h0<-Commit(2,ReplayOpen3)", "h1<-Commit(2,ReplayOpen3)", "note Replaying->Running"], None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("ReplayingLast", "prepared_miscounted", fails(None, "host prepared 1 steps but reported 0 StepDone for this tid")),
        ("ReplayingLast", "committed_next", fails(None, "protocol violation by host h0: host committed tid 2 but this stream was sent Commit only up to tid 1")),
        ("ReplayingLast", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("ReplayingLast", "committed_ahead", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("ReplayingLast", "checkpoint_done_right", fails(None, "protocol violation by host h0: CheckpointDone(2) unexpected")),
        ("ReplayingLast", "checkpoint_done_by_both", fails(None, "protocol violation by host h1: CheckpointDone(2) unexpected")),
        ("ReplayingLast", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("ReplayingLast", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("ReplayingLast", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("ReplayingLast", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("ReplayingLast", "host_error", fails(None, "host h0 reported an error (kind \"engine\"): boom")),
        ("ReplayingLast", "heartbeat", nothing()),
        ("ReplayingLast", "applied_pending", na()),
        ("ReplayingLast", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("ReplayingLast", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("ReplayingLast", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("ReplayingLast", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("ReplayingLast", "tick_early", nothing()),
        ("ReplayingLast", "tick_interval", nothing()),
        ("ReplayingLast", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Replaying->Joining", "drop h1#2"])),
        ("ReplayingLast", "admin_checkpoint", nothing()),
        ("ReplayingLast", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Replaying->Stopped"])),
        ("ReplayingLast", "admin_resume", nothing()),
        // ---- Beginning
        ("Beginning", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Running->Joining", "drop h0#1", "drop h1#3"])),
        ("Beginning", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Running->Joining", "drop h0#3", "drop h1#2"])),
        ("Beginning", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("Beginning", "disconnected_current", to("Joining", &["note lost h0", "note Running->Joining", "drop h1#2"])),
        ("Beginning", "disconnected_stale", nothing()),
        ("Beginning", "step_live", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Beginning", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Beginning", "step_not_increasing", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Beginning", "step_replayed_matching", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Beginning", "step_replayed_diverging", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Beginning", "step_wrong_state", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Beginning", "prepared_right", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Beginning", "prepared_by_both", fails(None, "protocol violation by host h1: Prepared arrived but no Prepare is outstanding")),
        ("Beginning", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Beginning", "prepared_duplicate", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Beginning", "prepared_miscounted", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Beginning", "committed_next", nothing()),
        ("Beginning", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("Beginning", "committed_ahead", fails(None, "protocol violation by host h0: host committed tid 5 but the ledger's last commit is 4")),
        ("Beginning", "checkpoint_done_right", fails(None, "protocol violation by host h0: CheckpointDone(5) unexpected")),
        ("Beginning", "checkpoint_done_by_both", fails(None, "protocol violation by host h1: CheckpointDone(5) unexpected")),
        ("Beginning", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("Beginning", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("Beginning", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("Beginning", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("Beginning", "host_error", fails(None, "host h0 reported an error (kind \"engine\"): boom")),
        ("Beginning", "heartbeat", nothing()),
        ("Beginning", "applied_pending", to("Open(5,Live)", &["h0<-Start(Live5)", "h1<-Start(Live5)"])),
        ("Beginning", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("Beginning", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("Beginning", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("Beginning", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("Beginning", "tick_early", nothing()),
        ("Beginning", "tick_interval", nothing()),
        ("Beginning", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Running->Joining", "drop h1#2"])),
        ("Beginning", "admin_checkpoint", nothing()),
        ("Beginning", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Running->Stopped"])),
        ("Beginning", "admin_resume", nothing()),
        // ---- OpenLive
        ("OpenLive", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Running->Joining", "drop h0#1", "drop h1#3"])),
        ("OpenLive", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Running->Joining", "drop h0#3", "drop h1#2"])),
        ("OpenLive", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("OpenLive", "disconnected_current", to("Joining", &["note lost h0", "note Running->Joining", "drop h1#2"])),
        ("OpenLive", "disconnected_stale", nothing()),
        ("OpenLive", "step_live", nothing()),
        ("OpenLive", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported for tid 11 while tid 4 is open")),
        ("OpenLive", "step_not_increasing", fails(Some(4), "protocol violation by host h0: step numbers must strictly increase")),
        ("OpenLive", "step_replayed_matching", fails(Some(4), "protocol violation by host h0: host reports state OpenReplay in mode Replay")),
        ("OpenLive", "step_replayed_diverging", fails(Some(4), "protocol violation by host h0: host reports state OpenReplay in mode Replay")),
        ("OpenLive", "step_wrong_state", fails(Some(4), "protocol violation by host h0: host reports state Prepared in mode Live")),
        ("OpenLive", "prepared_right", fails(Some(4), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("OpenLive", "prepared_by_both", fails(Some(4), "protocol violation by host h1: Prepared arrived but no Prepare is outstanding")),
        ("OpenLive", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("OpenLive", "prepared_duplicate", fails(Some(4), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("OpenLive", "prepared_miscounted", fails(Some(4), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("OpenLive", "committed_next", nothing()),
        ("OpenLive", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("OpenLive", "committed_ahead", fails(Some(4), "protocol violation by host h0: host committed tid 4 but the ledger's last commit is 3")),
        ("OpenLive", "checkpoint_done_right", fails(Some(4), "protocol violation by host h0: CheckpointDone(4) unexpected")),
        ("OpenLive", "checkpoint_done_by_both", fails(Some(4), "protocol violation by host h1: CheckpointDone(4) unexpected")),
        ("OpenLive", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("OpenLive", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("OpenLive", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("OpenLive", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("OpenLive", "host_error", fails(Some(4), "host h0 reported an error (kind \"engine\"): boom")),
        ("OpenLive", "heartbeat", nothing()),
        ("OpenLive", "applied_pending", na()),
        ("OpenLive", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("OpenLive", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("OpenLive", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("OpenLive", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("OpenLive", "tick_early", nothing()),
        ("OpenLive", "tick_interval", to("Preparing(4,Live)", &["h0<-Prepare(4)", "h1<-Prepare(4)"])),
        ("OpenLive", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Running->Joining", "drop h1#2"])),
        ("OpenLive", "admin_checkpoint", nothing()),
        ("OpenLive", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Running->Stopped"])),
        ("OpenLive", "admin_resume", nothing()),
        // ---- OpenReplay
        ("OpenReplay", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Running->Joining", "drop h0#1", "drop h1#3"])),
        ("OpenReplay", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Running->Joining", "drop h0#3", "drop h1#2"])),
        ("OpenReplay", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("OpenReplay", "disconnected_current", to("Joining", &["note lost h0", "note Running->Joining", "drop h1#2"])),
        ("OpenReplay", "disconnected_stale", nothing()),
        ("OpenReplay", "step_live", nothing()),
        ("OpenReplay", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported for tid 11 while tid 3 is open")),
        ("OpenReplay", "step_not_increasing", fails(Some(3), "protocol violation by host h0: step numbers must strictly increase")),
        ("OpenReplay", "step_replayed_matching", nothing()),
        ("OpenReplay", "step_replayed_diverging", fails(Some(3), "replay diverged from the journal: the replayed step ingested different input than was recorded")),
        ("OpenReplay", "step_wrong_state", fails(Some(3), "protocol violation by host h0: host reports state Prepared in mode Live")),
        ("OpenReplay", "prepared_right", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("OpenReplay", "prepared_by_both", fails(Some(3), "protocol violation by host h1: Prepared arrived but no Prepare is outstanding")),
        ("OpenReplay", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("OpenReplay", "prepared_duplicate", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("OpenReplay", "prepared_miscounted", fails(Some(3), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("OpenReplay", "committed_next", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("OpenReplay", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("OpenReplay", "committed_ahead", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("OpenReplay", "checkpoint_done_right", fails(Some(3), "protocol violation by host h0: CheckpointDone(3) unexpected")),
        ("OpenReplay", "checkpoint_done_by_both", fails(Some(3), "protocol violation by host h1: CheckpointDone(3) unexpected")),
        ("OpenReplay", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("OpenReplay", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("OpenReplay", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("OpenReplay", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("OpenReplay", "host_error", fails(Some(3), "host h0 reported an error (kind \"engine\"): boom")),
        ("OpenReplay", "heartbeat", nothing()),
        ("OpenReplay", "applied_pending", na()),
        ("OpenReplay", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("OpenReplay", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("OpenReplay", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("OpenReplay", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("OpenReplay", "tick_early", nothing()),
        ("OpenReplay", "tick_interval", to("Preparing(3,Replay)", &["h0<-Prepare(3)", "h1<-Prepare(3)"])),
        ("OpenReplay", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Running->Joining", "drop h1#2"])),
        ("OpenReplay", "admin_checkpoint", nothing()),
        ("OpenReplay", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Running->Stopped"])),
        ("OpenReplay", "admin_resume", nothing()),
        // ---- PreparingLive
        ("PreparingLive", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Running->Joining", "drop h0#1", "drop h1#3"])),
        ("PreparingLive", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Running->Joining", "drop h0#3", "drop h1#2"])),
        ("PreparingLive", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("PreparingLive", "disconnected_current", to("Joining", &["note lost h0", "note Running->Joining", "drop h1#2"])),
        ("PreparingLive", "disconnected_stale", nothing()),
        ("PreparingLive", "step_live", nothing()),
        ("PreparingLive", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported for tid 11 while tid 4 is open")),
        ("PreparingLive", "step_not_increasing", fails(Some(4), "protocol violation by host h0: step numbers must strictly increase")),
        ("PreparingLive", "step_replayed_matching", fails(Some(4), "protocol violation by host h0: host reports state OpenReplay in mode Replay")),
        ("PreparingLive", "step_replayed_diverging", fails(Some(4), "protocol violation by host h0: host reports state OpenReplay in mode Replay")),
        ("PreparingLive", "step_wrong_state", fails(Some(4), "protocol violation by host h0: host reports state Prepared in mode Live")),
        ("PreparingLive", "prepared_right", nothing()),
        ("PreparingLive", "prepared_by_both", to("Committing(4)", &["propose Commit(4,begin 5)"])),
        ("PreparingLive", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared for tid 11 while preparing tid 4")),
        ("PreparingLive", "prepared_duplicate", fails(Some(4), "protocol violation by host h0: Prepared twice for the same tid")),
        ("PreparingLive", "prepared_miscounted", fails(Some(4), "host prepared 2 steps but reported 1 StepDone for this tid")),
        ("PreparingLive", "committed_next", nothing()),
        ("PreparingLive", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("PreparingLive", "committed_ahead", fails(Some(4), "protocol violation by host h0: host committed tid 4 but the ledger's last commit is 3")),
        ("PreparingLive", "checkpoint_done_right", fails(Some(4), "protocol violation by host h0: CheckpointDone(4) unexpected")),
        ("PreparingLive", "checkpoint_done_by_both", fails(Some(4), "protocol violation by host h1: CheckpointDone(4) unexpected")),
        ("PreparingLive", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("PreparingLive", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("PreparingLive", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("PreparingLive", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("PreparingLive", "host_error", fails(Some(4), "host h0 reported an error (kind \"engine\"): boom")),
        ("PreparingLive", "heartbeat", nothing()),
        ("PreparingLive", "applied_pending", na()),
        ("PreparingLive", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("PreparingLive", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("PreparingLive", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("PreparingLive", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("PreparingLive", "tick_early", nothing()),
        ("PreparingLive", "tick_interval", nothing()),
        ("PreparingLive", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Running->Joining", "drop h1#2"])),
        ("PreparingLive", "admin_checkpoint", nothing()),
        ("PreparingLive", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Running->Stopped"])),
        ("PreparingLive", "admin_resume", nothing()),
        // ---- PipelinedLive (commit pipeline)
        ("PipelinedLive", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Running->Joining", "drop h0#1", "drop h1#3"])),
        ("PipelinedLive", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Running->Joining", "drop h0#3", "drop h1#2"])),
        ("PipelinedLive", "hello_unknown", rejects("unknown host id \"h9\": members of cluster \"c1\" are [\"h0\", \"h1\"]; check the host's --host-id")),
        ("PipelinedLive", "disconnected_current", to("Joining", &["note lost h0", "note Running->Joining", "drop h1#2"])),
        ("PipelinedLive", "disconnected_stale", nothing()),
        ("PipelinedLive", "step_live", nothing()),
        ("PipelinedLive", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported for tid 11 while tid 4 is open")),
        ("PipelinedLive", "step_not_increasing", fails(Some(4), "protocol violation by host h0: step numbers must strictly increase; previous step was 4")),
        ("PipelinedLive", "step_replayed_matching", fails(Some(4), "protocol violation by host h0: host reports state OpenReplay in mode Replay, coordinator expects Running, Open { tid: 5, mode: Live, opened_us: 200000 }")),
        ("PipelinedLive", "step_replayed_diverging", fails(Some(4), "protocol violation by host h0: host reports state OpenReplay in mode Replay, coordinator expects Running, Open { tid: 5, mode: Live, opened_us: 200000 }")),
        ("PipelinedLive", "step_wrong_state", fails(Some(4), "protocol violation by host h0: host reports state Prepared in mode Live, coordinator expects Running, Open { tid: 5, mode: Live, opened_us: 200000 }")),
        ("PipelinedLive", "prepared_right", nothing()),
        ("PipelinedLive", "prepared_by_both", to("Open(5,Live)", &["propose Commit(4,begin 7)"])),
        ("PipelinedLive", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared for tid 11 while preparing tid 4")),
        ("PipelinedLive", "prepared_duplicate", fails(Some(4), "protocol violation by host h0: Prepared arrived but no Prepare is outstanding (Running, Open { tid: 5, mode: Live, opened_us: 200000 })")),
        ("PipelinedLive", "prepared_miscounted", fails(Some(4), "host prepared 2 steps but reported 1 StepDone for this tid")),
        ("PipelinedLive", "committed_next", nothing()),
        ("PipelinedLive", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase; this host already committed 2")),
        ("PipelinedLive", "committed_ahead", fails(Some(4), "protocol violation by host h0: host committed tid 4 but the ledger's last commit is 3")),
        ("PipelinedLive", "checkpoint_done_right", fails(Some(4), "protocol violation by host h0: CheckpointDone(4) unexpected (Running, Open { tid: 5, mode: Live, opened_us: 200000 })")),
        ("PipelinedLive", "checkpoint_done_by_both", fails(Some(4), "protocol violation by host h1: CheckpointDone(4) unexpected (Running, Open { tid: 5, mode: Live, opened_us: 200000 })")),
        ("PipelinedLive", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected (Running, Open { tid: 5, mode: Live, opened_us: 200000 })")),
        ("PipelinedLive", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected (Running, Open { tid: 5, mode: Live, opened_us: 200000 })")),
        ("PipelinedLive", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected (Running, Open { tid: 5, mode: Live, opened_us: 200000 })")),
        ("PipelinedLive", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected (Running, Open { tid: 5, mode: Live, opened_us: 200000 })")),
        ("PipelinedLive", "host_error", fails(Some(4), "host h0 reported an error (kind \"engine\"): boom")),
        ("PipelinedLive", "heartbeat", nothing()),
        ("PipelinedLive", "applied_pending", na()),
        ("PipelinedLive", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose (Running, Open { tid: 5, mode: Live, opened_us: 200000 })")),
        ("PipelinedLive", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued (6); tids are never reused")),
        ("PipelinedLive", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued (6); tids are never reused")),
        ("PipelinedLive", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("PipelinedLive", "tick_early", nothing()),
        ("PipelinedLive", "tick_interval", to("Open(6,Live)", &["h0<-Prepare(5,next 6)", "h1<-Prepare(5,next 6)"])),
        ("PipelinedLive", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Running->Joining", "drop h1#2"])),
        ("PipelinedLive", "admin_checkpoint", nothing()),
        ("PipelinedLive", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Running->Stopped"])),
        ("PipelinedLive", "admin_resume", nothing()),
        // ---- PreparingReplay
        ("PreparingReplay", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Running->Joining", "drop h0#1", "drop h1#3"])),
        ("PreparingReplay", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Running->Joining", "drop h0#3", "drop h1#2"])),
        ("PreparingReplay", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("PreparingReplay", "disconnected_current", to("Joining", &["note lost h0", "note Running->Joining", "drop h1#2"])),
        ("PreparingReplay", "disconnected_stale", nothing()),
        ("PreparingReplay", "step_live", nothing()),
        ("PreparingReplay", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported for tid 11 while tid 3 is open")),
        ("PreparingReplay", "step_not_increasing", fails(Some(3), "protocol violation by host h0: step numbers must strictly increase")),
        ("PreparingReplay", "step_replayed_matching", nothing()),
        ("PreparingReplay", "step_replayed_diverging", fails(Some(3), "replay diverged from the journal: the replayed step ingested different input than was recorded")),
        ("PreparingReplay", "step_wrong_state", fails(Some(3), "protocol violation by host h0: host reports state Prepared in mode Live")),
        ("PreparingReplay", "prepared_right", nothing()),
        ("PreparingReplay", "prepared_by_both", to("Committing(3)", &["propose Commit(3,begin 4)"])),
        ("PreparingReplay", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared for tid 11 while preparing tid 3")),
        ("PreparingReplay", "prepared_duplicate", fails(Some(3), "protocol violation by host h0: Prepared twice for the same tid")),
        ("PreparingReplay", "prepared_miscounted", fails(Some(3), "host prepared 2 steps but reported 1 StepDone for this tid")),
        ("PreparingReplay", "committed_next", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("PreparingReplay", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("PreparingReplay", "committed_ahead", fails(Some(3), "protocol violation by host h0: host committed tid 3 but the ledger's last commit is 2")),
        ("PreparingReplay", "checkpoint_done_right", fails(Some(3), "protocol violation by host h0: CheckpointDone(3) unexpected")),
        ("PreparingReplay", "checkpoint_done_by_both", fails(Some(3), "protocol violation by host h1: CheckpointDone(3) unexpected")),
        ("PreparingReplay", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("PreparingReplay", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("PreparingReplay", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("PreparingReplay", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("PreparingReplay", "host_error", fails(Some(3), "host h0 reported an error (kind \"engine\"): boom")),
        ("PreparingReplay", "heartbeat", nothing()),
        ("PreparingReplay", "applied_pending", na()),
        ("PreparingReplay", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("PreparingReplay", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("PreparingReplay", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("PreparingReplay", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("PreparingReplay", "tick_early", nothing()),
        ("PreparingReplay", "tick_interval", nothing()),
        ("PreparingReplay", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Running->Joining", "drop h1#2"])),
        ("PreparingReplay", "admin_checkpoint", nothing()),
        ("PreparingReplay", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Running->Stopped"])),
        ("PreparingReplay", "admin_resume", nothing()),
        // ---- Committing
        ("Committing", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Running->Joining", "drop h0#1", "drop h1#3"])),
        ("Committing", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Running->Joining", "drop h0#3", "drop h1#2"])),
        ("Committing", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("Committing", "disconnected_current", to("Joining", &["note lost h0", "note Running->Joining", "drop h1#2"])),
        ("Committing", "disconnected_stale", nothing()),
        ("Committing", "step_live", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Committing", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Committing", "step_not_increasing", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Committing", "step_replayed_matching", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Committing", "step_replayed_diverging", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Committing", "step_wrong_state", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Committing", "prepared_right", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Committing", "prepared_by_both", fails(None, "protocol violation by host h1: Prepared arrived but no Prepare is outstanding")),
        ("Committing", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Committing", "prepared_duplicate", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Committing", "prepared_miscounted", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Committing", "committed_next", nothing()),
        ("Committing", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("Committing", "committed_ahead", fails(None, "protocol violation by host h0: host committed tid 4 but the ledger's last commit is 3")),
        ("Committing", "checkpoint_done_right", fails(None, "protocol violation by host h0: CheckpointDone(4) unexpected")),
        ("Committing", "checkpoint_done_by_both", fails(None, "protocol violation by host h1: CheckpointDone(4) unexpected")),
        ("Committing", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("Committing", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("Committing", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("Committing", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("Committing", "host_error", fails(None, "host h0 reported an error (kind \"engine\"): boom")),
        ("Committing", "heartbeat", nothing()),
        ("Committing", "applied_pending", to("Open(5,Live)", &["note committed 4 replayed=false records=1", "h0<-Commit(4,Live5)", "h1<-Commit(4,Live5)"])),
        ("Committing", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("Committing", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("Committing", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("Committing", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("Committing", "tick_early", nothing()),
        ("Committing", "tick_interval", nothing()),
        ("Committing", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Running->Joining", "drop h1#2"])),
        ("Committing", "admin_checkpoint", nothing()),
        ("Committing", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Running->Stopped"])),
        ("Committing", "admin_resume", nothing()),
        // ---- Checkpointing
        ("Checkpointing", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Running->Joining", "drop h0#1", "drop h1#3"])),
        ("Checkpointing", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Running->Joining", "drop h0#3", "drop h1#2"])),
        ("Checkpointing", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("Checkpointing", "disconnected_current", to("Joining", &["note lost h0", "note Running->Joining", "drop h1#2"])),
        ("Checkpointing", "disconnected_stale", nothing()),
        ("Checkpointing", "step_live", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Checkpointing", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Checkpointing", "step_not_increasing", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Checkpointing", "step_replayed_matching", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Checkpointing", "step_replayed_diverging", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Checkpointing", "step_wrong_state", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("Checkpointing", "prepared_right", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Checkpointing", "prepared_by_both", fails(None, "protocol violation by host h1: Prepared arrived but no Prepare is outstanding")),
        ("Checkpointing", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Checkpointing", "prepared_duplicate", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Checkpointing", "prepared_miscounted", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("Checkpointing", "committed_next", nothing()),
        ("Checkpointing", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("Checkpointing", "committed_ahead", fails(None, "protocol violation by host h0: host committed tid 5 but the ledger's last commit is 4")),
        ("Checkpointing", "checkpoint_done_right", nothing()),
        ("Checkpointing", "checkpoint_done_by_both", to("RecordingCheckpoint(4)", &["propose CheckpointComplete(4)"])),
        ("Checkpointing", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("Checkpointing", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("Checkpointing", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("Checkpointing", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("Checkpointing", "host_error", fails(None, "host h0 reported an error (kind \"engine\"): boom")),
        ("Checkpointing", "heartbeat", nothing()),
        ("Checkpointing", "applied_pending", na()),
        ("Checkpointing", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("Checkpointing", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("Checkpointing", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("Checkpointing", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("Checkpointing", "tick_early", nothing()),
        ("Checkpointing", "tick_interval", nothing()),
        ("Checkpointing", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Running->Joining", "drop h1#2"])),
        ("Checkpointing", "admin_checkpoint", nothing()),
        ("Checkpointing", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Running->Stopped"])),
        ("Checkpointing", "admin_resume", nothing()),
        // ---- RecordingCheckpoint
        ("RecordingCheckpoint", "hello_h1_new", to("Joining", &["drop h1#2", "accept#3 h1", "note joined h1", "note lost h1", "note Running->Joining", "drop h0#1", "drop h1#3"])),
        ("RecordingCheckpoint", "hello_h0_replaces", to("Joining", &["drop h0#1", "accept#3 h0", "note joined h0", "note lost h0", "note Running->Joining", "drop h0#3", "drop h1#2"])),
        ("RecordingCheckpoint", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("RecordingCheckpoint", "disconnected_current", to("Joining", &["note lost h0", "note Running->Joining", "drop h1#2"])),
        ("RecordingCheckpoint", "disconnected_stale", nothing()),
        ("RecordingCheckpoint", "step_live", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("RecordingCheckpoint", "step_wrong_tid", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("RecordingCheckpoint", "step_not_increasing", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("RecordingCheckpoint", "step_replayed_matching", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("RecordingCheckpoint", "step_replayed_diverging", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("RecordingCheckpoint", "step_wrong_state", fails(None, "protocol violation by host h0: step reported while the coordinator has no open transaction")),
        ("RecordingCheckpoint", "prepared_right", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("RecordingCheckpoint", "prepared_by_both", fails(None, "protocol violation by host h1: Prepared arrived but no Prepare is outstanding")),
        ("RecordingCheckpoint", "prepared_wrong_tid", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("RecordingCheckpoint", "prepared_duplicate", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("RecordingCheckpoint", "prepared_miscounted", fails(None, "protocol violation by host h0: Prepared arrived but no Prepare is outstanding")),
        ("RecordingCheckpoint", "committed_next", nothing()),
        ("RecordingCheckpoint", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("RecordingCheckpoint", "committed_ahead", fails(None, "protocol violation by host h0: host committed tid 5 but the ledger's last commit is 4")),
        ("RecordingCheckpoint", "checkpoint_done_right", fails(None, "protocol violation by host h0: CheckpointDone(4) unexpected")),
        ("RecordingCheckpoint", "checkpoint_done_by_both", fails(None, "protocol violation by host h1: CheckpointDone(4) unexpected")),
        ("RecordingCheckpoint", "checkpoint_done_wrong", fails(None, "protocol violation by host h0: CheckpointDone(11) unexpected")),
        ("RecordingCheckpoint", "restored_right", fails(None, "protocol violation by host h0: Restored(0) unexpected")),
        ("RecordingCheckpoint", "restored_by_both", fails(None, "protocol violation by host h1: Restored(0) unexpected")),
        ("RecordingCheckpoint", "restored_wrong", fails(None, "protocol violation by host h0: Restored(7) unexpected")),
        ("RecordingCheckpoint", "host_error", fails(None, "host h0 reported an error (kind \"engine\"): boom")),
        ("RecordingCheckpoint", "heartbeat", nothing()),
        ("RecordingCheckpoint", "applied_pending", to("Beginning(5)", &["note checkpoint 4", "h0<-CheckpointComplete(4)", "h1<-CheckpointComplete(4)", "propose Begin(5)"])),
        ("RecordingCheckpoint", "applied_unexpected", fails(None, "the ledger applied NewEpoch(7), which this coordinator did not propose")),
        ("RecordingCheckpoint", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("RecordingCheckpoint", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("RecordingCheckpoint", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("RecordingCheckpoint", "tick_early", nothing()),
        ("RecordingCheckpoint", "tick_interval", nothing()),
        ("RecordingCheckpoint", "tick_deadline", to("Joining", &["drop h0#1", "note lost h0", "note Running->Joining", "drop h1#2"])),
        ("RecordingCheckpoint", "admin_checkpoint", nothing()),
        ("RecordingCheckpoint", "admin_stop", to("Stopped", &["h0<-Stop", "h1<-Stop", "note Running->Stopped"])),
        ("RecordingCheckpoint", "admin_resume", nothing()),
        // ---- Failed
        ("Failed", "hello_h1_new", to("Failed", &["drop h1#2", "accept#3 h1", "note joined h1"])),
        ("Failed", "hello_h0_replaces", to("Failed", &["drop h0#1", "accept#3 h0", "note joined h0"])),
        ("Failed", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("Failed", "disconnected_current", to("Failed", &["note lost h0"])),
        ("Failed", "disconnected_stale", nothing()),
        ("Failed", "step_live", nothing()),
        ("Failed", "step_wrong_tid", nothing()),
        ("Failed", "step_not_increasing", nothing()),
        ("Failed", "step_replayed_matching", nothing()),
        ("Failed", "step_replayed_diverging", nothing()),
        ("Failed", "step_wrong_state", nothing()),
        ("Failed", "prepared_right", nothing()),
        ("Failed", "prepared_by_both", nothing()),
        ("Failed", "prepared_wrong_tid", nothing()),
        ("Failed", "prepared_duplicate", nothing()),
        ("Failed", "prepared_miscounted", nothing()),
        ("Failed", "committed_next", nothing()),
        ("Failed", "committed_repeated", nothing()),
        ("Failed", "committed_ahead", nothing()),
        ("Failed", "checkpoint_done_right", nothing()),
        ("Failed", "checkpoint_done_by_both", nothing()),
        ("Failed", "checkpoint_done_wrong", nothing()),
        ("Failed", "restored_right", nothing()),
        ("Failed", "restored_by_both", nothing()),
        ("Failed", "restored_wrong", nothing()),
        ("Failed", "host_error", nothing()),
        ("Failed", "heartbeat", nothing()),
        ("Failed", "applied_pending", na()),
        ("Failed", "applied_unexpected", nothing()),
        ("Failed", "applied_rejected", nothing()),
        ("Failed", "applied_diverging", nothing()),
        ("Failed", "propose_failed", nothing()),
        ("Failed", "tick_early", nothing()),
        ("Failed", "tick_interval", nothing()),
        ("Failed", "tick_deadline", nothing()),
        ("Failed", "admin_checkpoint", nothing()),
        ("Failed", "admin_stop", nothing()),
        ("Failed", "admin_resume", to("Joining", &["note Failed->Joining", "drop h0#1", "drop h1#2"])),
        // ---- Stopped
        ("Stopped", "hello_h1_new", to("Stopped", &["drop h1#2", "accept#3 h1", "note joined h1"])),
        ("Stopped", "hello_h0_replaces", to("Stopped", &["drop h0#1", "accept#3 h0", "note joined h0"])),
        ("Stopped", "hello_unknown", rejects("unknown host id \"h9\"")),
        ("Stopped", "disconnected_current", to("Stopped", &["note lost h0"])),
        ("Stopped", "disconnected_stale", nothing()),
        ("Stopped", "step_live", nothing()),
        ("Stopped", "step_wrong_tid", nothing()),
        ("Stopped", "step_not_increasing", nothing()),
        ("Stopped", "step_replayed_matching", nothing()),
        ("Stopped", "step_replayed_diverging", nothing()),
        ("Stopped", "step_wrong_state", nothing()),
        ("Stopped", "prepared_right", nothing()),
        ("Stopped", "prepared_by_both", nothing()),
        ("Stopped", "prepared_wrong_tid", nothing()),
        ("Stopped", "prepared_duplicate", nothing()),
        ("Stopped", "prepared_miscounted", nothing()),
        ("Stopped", "committed_next", nothing()),
        ("Stopped", "committed_repeated", fails(None, "protocol violation by host h0: Committed tids must increase")),
        ("Stopped", "committed_ahead", fails(Some(4), "protocol violation by host h0: host committed tid 4 but the ledger's last commit is 3")),
        ("Stopped", "checkpoint_done_right", nothing()),
        ("Stopped", "checkpoint_done_by_both", nothing()),
        ("Stopped", "checkpoint_done_wrong", nothing()),
        ("Stopped", "restored_right", nothing()),
        ("Stopped", "restored_by_both", nothing()),
        ("Stopped", "restored_wrong", nothing()),
        ("Stopped", "host_error", fails(Some(4), "host h0 reported an error (kind \"engine\"): boom")),
        ("Stopped", "heartbeat", nothing()),
        ("Stopped", "applied_pending", na()),
        ("Stopped", "applied_unexpected", nothing()),
        ("Stopped", "applied_rejected", fails(None, "the ledger rejected Begin(1): tid 1 is not above the highest tid ever issued")),
        ("Stopped", "applied_diverging", fails(None, "the ledger applied Begin(1) but this coordinator's copy of it rejects that: tid 1 is not above the highest tid ever issued")),
        ("Stopped", "propose_failed", fails(None, "the ledger could not record Begin(99): disk full")),
        ("Stopped", "tick_early", nothing()),
        ("Stopped", "tick_interval", nothing()),
        ("Stopped", "tick_deadline", nothing()),
        ("Stopped", "admin_checkpoint", nothing()),
        ("Stopped", "admin_stop", nothing()),
        ("Stopped", "admin_resume", to("Joining", &["note Stopped->Joining", "drop h0#1", "drop h1#2"])),
    ]
}

/// Runs one row; returns the observed outcome as table source, and whether
/// it matches `want`.
fn run_row(phase: &str, event: &str, want: Option<&Out>) -> (String, bool) {
    let (mut h, ctx) = reach(phase);
    if event == "applied_pending" && h.held.is_empty() {
        let ok = matches!(want, Some(Out::NotApplicable));
        return (format!("(\"{phase}\", \"{event}\", na()),"), ok);
    }
    let before = h.core.phase().clone();
    let connected: Vec<HostId> =
        h.core.hosts().iter().filter(|(_, s)| s.conn.is_some()).map(|(h, _)| h.clone()).collect();
    let actions = fire(&mut h, &ctx, event);
    let after = h.core.phase().clone();
    let shown: Vec<String> = actions.iter().map(show).collect();
    let observed = match (&actions[..], &after) {
        ([], p) if *p == before => "nothing()".to_string(),
        ([Action::Reject { error, .. }], p) if *p == before => format!("rejects({error:?})"),
        (_, Phase::Failed(d)) if !matches!(before, Phase::Failed(_)) => {
            let recorded = actions.iter().find_map(|a| match a {
                Action::Propose(LedgerEntry::Fail { tid, .. }) => Some(*tid),
                _ => None,
            });
            // What the failure itself does; anything before it came from
            // a first report that succeeded.
            let failing = usize::from(recorded.is_some()) + connected.len() + 2;
            match &shown[..shown.len().saturating_sub(failing)] {
                [] => format!("fails({recorded:?}, {:?})", d.summary),
                first => format!("fails_after(&{first:?}, {recorded:?}, {:?})", d.summary),
            }
        }
        _ => format!("to({:?}, &{:?})", show_phase(&after), shown),
    };
    let row = format!("(\"{phase}\", \"{event}\", {observed}),");
    let ok = match want {
        None | Some(Out::NotApplicable) => false,
        Some(Out::Nothing) => actions.is_empty() && after == before,
        Some(Out::Rejects(text)) => {
            matches!(&actions[..], [Action::Reject { error, .. }] if error.contains(text)) && after == before
        }
        Some(Out::To(next, want)) => show_phase(&after) == *next && shown == *want,
        Some(Out::Fails(recorded, text)) | Some(Out::FailsAfter(_, recorded, text)) => {
            let first = match want {
                Some(Out::FailsAfter(first, ..)) => first.as_slice(),
                _ => &[],
            };
            let mut expected: Vec<String> = first.iter().map(|a| a.to_string()).collect();
            expected.extend(recorded.iter().map(|t| format!("propose Fail({t})")));
            expected.extend(connected.iter().map(|h| format!("{h}<-Stop")));
            expected.push("note Failed".into());
            // The phase the failure leaves: the last one `first` moved to.
            let from = first
                .iter()
                .rev()
                .find_map(|a| a.strip_prefix("note ").and_then(|n| n.split_once("->")).map(|(_, to)| to))
                .unwrap_or(before.name());
            expected.push(format!("note {from}->Failed"));
            let summary_ok = matches!(&after, Phase::Failed(d) if d.summary.contains(text))
                && actions.iter().any(|a| matches!(a, Action::Notice(Notice::Failed(d)) if d.summary.contains(text)));
            shown == expected && summary_ok
        }
    };
    (row, ok)
}

#[test]
fn table_covers_every_phase_event_pair_exactly_once() {
    let rows = table();
    let mut seen = BTreeSet::new();
    for (p, e, _) in &rows {
        assert!(PHASES.contains(p), "unknown phase {p}");
        assert!(EVENTS.contains(e), "unknown event {e}");
        assert!(seen.insert((*p, *e)), "({p}, {e}) appears twice");
    }
    let missing: Vec<_> =
        PHASES.iter().flat_map(|p| EVENTS.iter().map(move |e| (*p, *e))).filter(|pe| !seen.contains(pe)).collect();
    assert!(missing.is_empty(), "{} pairs missing from the table, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    assert_eq!(rows.len(), PHASES.len() * EVENTS.len());
}

#[test]
fn every_phase_event_pair_has_its_pinned_outcome() {
    let rows = table();
    let print = std::env::var_os("LOCKSTEP_PRINT_TABLE").is_some();
    let mut wrong = Vec::new();
    for p in PHASES {
        if print {
            println!("        // ---- {p}");
        }
        for e in EVENTS {
            let want = rows.iter().find(|(rp, re, _)| rp == p && re == e).map(|(_, _, o)| o);
            let (observed, ok) = run_row(p, e, want);
            if print {
                println!("        {observed}");
            }
            if !ok {
                wrong.push(observed);
            }
        }
    }
    assert!(wrong.is_empty(), "{} rows differ; observed:\n{}", wrong.len(), wrong.join("\n"));
}

/// A `ReplayedBatch` over the union of its steps' endpoints (sorted), as
/// the wire layer hands it over.
fn batch_of(tid: Tid, steps: &[(u64, Aggregate, Aggregate)], prepared: Option<PreparedReport>) -> ReplayedBatch {
    let endpoints: Vec<String> =
        steps.iter().flat_map(|(_, r, j)| r.0.keys().chain(j.0.keys()).cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let row = |a: &Aggregate| endpoints.iter().map(|e| a.get(e)).collect::<Vec<_>>();
    ReplayedBatch {
        tid,
        endpoints: endpoints.clone().into(),
        steps: steps.iter().map(|(s, _, _)| *s).collect(),
        replayed: steps.iter().flat_map(|(_, r, _)| row(r)).collect(),
        // As a host sends it: no journaled side when it equals the replayed one.
        journaled: steps.iter().any(|(_, r, j)| r != j).then(|| steps.iter().flat_map(|(_, _, j)| row(j)).collect()),
        prepared,
    }
}

/// `Event::Replayed` is defined as its single reports: in every phase, for
/// batches that match the journal, diverge, skip back, name another tid,
/// lack an endpoint on one side, or carry a Prepared, the batch leaves the
/// same actions, phase and host progress as its `Step`s and `Prepared` fed
/// one by one (whose outcomes the table above pins). This covers the new
/// event in every phase, and the core's column fast path against the
/// per-step path.
#[test]
fn a_replayed_batch_does_exactly_what_its_single_reports_do() {
    let one = || agg(&[("gen", 1, 1)]);
    type Shape = Box<dyn Fn(&Ctx) -> ReplayedBatch>;
    let shapes: Vec<(&str, Shape)> = vec![
        ("matching", Box::new(move |c: &Ctx| batch_of(c.tid, &[(c.last_step + 1, one(), one()), (c.last_step + 3, one(), one())], None))),
        (
            "matching, journaled side sent too",
            Box::new(move |c: &Ctx| {
                let mut b = batch_of(c.tid, &[(c.last_step + 1, one(), one()), (c.last_step + 3, one(), one())], None);
                b.journaled = Some(b.replayed.clone());
                b
            }),
        ),
        (
            "second diverging",
            Box::new(move |c: &Ctx| {
                batch_of(c.tid, &[(c.last_step + 1, one(), one()), (c.last_step + 2, agg(&[("gen", 1, 2)]), one())], None)
            }),
        ),
        ("not increasing", Box::new(move |c: &Ctx| batch_of(c.tid, &[(c.last_step + 1, one(), one()), (c.last_step, one(), one())], None))),
        ("at the last step", Box::new(move |c: &Ctx| batch_of(c.tid, &[(c.last_step, one(), one())], None))),
        ("another tid", Box::new(move |c: &Ctx| batch_of(11, &[(c.last_step + 1, one(), one())], None))),
        (
            "endpoint on one side only",
            Box::new(move |c: &Ctx| {
                batch_of(c.tid, &[(c.last_step + 1, agg(&[("gen", 1, 1), ("push", 0, 0)]), one())], None)
            }),
        ),
        ("prepared only", Box::new(move |c: &Ctx| batch_of(c.tid, &[], Some(c.prepared.clone())))),
        (
            "steps and prepared",
            Box::new(move |c: &Ctx| batch_of(c.tid, &[(c.last_step + 1, one(), one())], Some(c.prepared.clone()))),
        ),
    ];
    let mut wrong = Vec::new();
    for phase in PHASES {
        for (shape, make) in &shapes {
            let (mut batched, ctx) = reach(phase);
            let b = make(&ctx);
            let (mut single, _) = reach(phase);
            let mut want = Vec::new();
            for i in 0..b.steps.len() {
                want.extend(single.ev(Event::Step { host: "h0".into(), report: b.step_report(i) }));
            }
            if let Some(report) = b.prepared.clone() {
                want.extend(single.ev(Event::Prepared { host: "h0".into(), report }));
            }
            let got = batched.ev(Event::Replayed { host: "h0".into(), batch: b });
            let same = got == want
                && batched.core.phase() == single.core.phase()
                && format!("{:?}", batched.core.hosts()) == format!("{:?}", single.core.hosts());
            if !same {
                wrong.push(format!("{phase}, {shape}: batch {:?} -> {}; singles {:?} -> {}", got.iter().map(show).collect::<Vec<_>>(), show_phase(batched.core.phase()), want.iter().map(show).collect::<Vec<_>>(), show_phase(single.core.phase())));
            }
        }
    }
    assert!(wrong.is_empty(), "{} cases differ:\n{}", wrong.len(), wrong.join("\n"));
}
