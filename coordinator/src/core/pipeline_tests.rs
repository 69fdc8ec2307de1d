//! Scenario tests of the live commit pipeline (`pipeline_depth` > 1) and of
//! recovery from a ledger that holds several begun, uncommitted tids.

use super::tests::{agg, cfg, Harness};
use super::*;
use crate::ledger::HostTxnRecord;

fn cmds_for(sent: &[(HostId, Cmd)], host: &str) -> Vec<Cmd> {
    sent.iter().filter(|(h, _)| h == host).map(|(_, c)| c.clone()).collect()
}

fn pipelined(depth: u64, checkpoint_every_txns: u64) -> Harness {
    let mut h = Harness::new(CoreConfig { pipeline_depth: depth, checkpoint_every_txns, ..cfg() }, LedgerState::default());
    h.hello("h0", vec![], vec![]);
    h.hello("h1", vec![], vec![]);
    h.restored_all(0);
    h
}

fn open_tid(h: &Harness) -> Option<Tid> {
    match h.core.phase() {
        Phase::Running(Txn::Open { tid, .. }) => Some(*tid),
        _ => None,
    }
}

/// Both hosts prepare `t` having run one live step of it each.
fn prepare_both(h: &mut Harness, t: Tid, step0: u64, step1: u64) {
    h.step("h0", t, step0, agg(&[("gen", 1, t)]), None);
    h.prepared("h0", t, 1, agg(&[("gen", 1, t)]), 10 * t);
    h.step("h1", t, step1, agg(&[("gen", 2, t)]), None);
    h.prepared("h1", t, 1, agg(&[("gen", 2, t)]), 10 * t + 1);
}

#[test]
fn tids_are_begun_ahead_and_a_due_tid_prepares_with_the_next_one_opened() {
    let mut h = pipelined(3, 0);
    assert_eq!(cmds_for(&h.take_sent(), "h0"), vec![Cmd::Restore { checkpoint: 0 }, Cmd::Start(Start::live(1))]);
    assert_eq!(h.core.ahead().iter().copied().collect::<Vec<_>>(), vec![2, 3], "begun ahead up to the depth");
    assert_eq!(h.shadow.open_tids().collect::<Vec<_>>(), vec![1, 2, 3]);
    h.now = 100;
    h.ev(Event::Tick);
    assert_eq!(cmds_for(&h.take_sent(), "h1"), vec![Cmd::Prepare { tid: 1, next: Some(Start::live(2)) }]);
    assert_eq!(open_tid(&h), Some(2), "tid 2 runs while tid 1 commits");
    // A host's reports are about its oldest unprepared tid: h0 still
    // finishes its step of 1, then prepares 1, then steps in 2.
    h.step("h0", 1, 1, agg(&[("gen", 1, 1)]), None);
    h.prepared("h0", 1, 1, agg(&[("gen", 1, 1)]), 10);
    h.step("h0", 2, 2, agg(&[("gen", 1, 2)]), None);
    assert!(h.failure().is_none(), "{:?}", h.failure());
    assert_eq!(h.shadow.last_committed, 0, "not before every host prepared");
    h.prepared("h1", 1, 0, agg(&[]), 11);
    assert_eq!(h.shadow.last_committed, 1);
    let rec = h.shadow.txn(1).unwrap();
    assert_eq!(rec.hosts.get("h0").unwrap(), &HostTxnRecord::new(1, &agg(&[("gen", 1, 1)]), 10));
    assert_eq!(cmds_for(&h.take_sent(), "h0"), vec![Cmd::Commit { tid: 1, next: None }], "no next: tid 2 already runs");
    assert!(h.notices.contains(&Notice::Committed { tid: 1, replayed: false, records: 1 }));
    assert_eq!(h.core.ahead().iter().copied().collect::<Vec<_>>(), vec![3, 4], "topped up again");
    assert!(h.failure().is_none());
}

#[test]
fn commits_are_recorded_and_sent_in_tid_order_and_a_full_pipeline_waits() {
    let mut h = pipelined(3, 0);
    h.take_sent();
    h.hold = true;
    h.now = 100;
    h.ev(Event::Tick); // Prepare{1, next 2}
    prepare_both(&mut h, 1, 1, 1);
    h.now = 200;
    h.ev(Event::Tick); // Prepare{2, next 3}
    prepare_both(&mut h, 2, 2, 2);
    assert_eq!(open_tid(&h), Some(3));
    assert_eq!(h.core.inflight().len(), 2);
    h.take_sent();
    h.now = 300;
    h.ev(Event::Tick);
    assert!(h.take_sent().is_empty(), "full: tid 3 waits for an older commit rather than prepare");
    assert_eq!(h.core.commit_due_us(), None, "and the shell does not spin on its deadline");
    // The two commits were proposed in order; each lands and goes out in order.
    let held: Vec<(Tid, Option<Tid>)> = h
        .held
        .iter()
        .filter_map(|e| if let LedgerEntry::Commit { tid, begin_next, .. } = e { Some((*tid, *begin_next)) } else { None })
        .collect();
    assert_eq!(held, vec![(1, Some(4)), (2, Some(5))], "each commit entry also begins a tid ahead: one entry per tid");
    assert_eq!(h.held.len(), 2, "and no Begin entry of its own");
    h.hold = false;
    while !h.held.is_empty() {
        h.apply_held();
    }
    let sent = cmds_for(&h.take_sent(), "h0");
    let commits: Vec<&Cmd> = sent.iter().filter(|c| matches!(c, Cmd::Commit { .. })).collect();
    assert_eq!(commits, [&Cmd::Commit { tid: 1, next: None }, &Cmd::Commit { tid: 2, next: None }]);
    assert!(sent.contains(&Cmd::Prepare { tid: 3, next: Some(Start::live(4)) }), "room again: the due tid 3 prepares, {sent:?}");
    assert_eq!(h.shadow.last_committed, 2);
    assert!(h.failure().is_none());
}

#[test]
fn a_step_for_the_open_tid_before_the_hosts_prepared_the_older_one_is_a_protocol_violation() {
    let mut h = pipelined(3, 0);
    h.now = 100;
    h.ev(Event::Tick); // Prepare{1, next 2}
    h.step("h0", 2, 1, agg(&[("gen", 1, 1)]), None);
    let d = h.failure().expect("failed");
    assert!(d.summary.contains("tid 2 while tid 1 is open"), "{d}");
}

#[test]
fn tids_are_not_begun_past_the_next_checkpoint_which_comes_with_no_tid_open() {
    let mut h = pipelined(4, 3);
    h.take_sent();
    for t in 1..=3 {
        h.now = 100 * t;
        h.ev(Event::Tick);
        prepare_both(&mut h, t, t, t);
    }
    assert!(h.shadow.tid_high_water <= 3, "never begun past the checkpoint: {}", h.shadow.tid_high_water);
    let sent = cmds_for(&h.take_sent(), "h0");
    assert!(sent.contains(&Cmd::Prepare { tid: 3, next: None }), "the last tid before it prepares alone: {sent:?}");
    assert_eq!(sent[sent.len() - 2..], [Cmd::Commit { tid: 3, next: None }, Cmd::Checkpoint { tid: 3 }]);
    for host in ["h0", "h1"] {
        h.ev(Event::CheckpointDone { host: host.into(), tid: 3 });
    }
    assert_eq!(h.shadow.checkpoints, vec![3]);
    assert_eq!(open_tid(&h), Some(4));
    assert_eq!(h.core.ahead().iter().copied().collect::<Vec<_>>(), vec![5, 6], "the pipeline fills again after it");
    assert!(h.failure().is_none());
}

/// A ledger as a pipelined coordinator leaves it when it dies: tid 1
/// committed, 2 prepared everywhere but its commit never recorded, 3 open
/// (h0 journaled a step of it), 4 begun ahead and never started.
fn crashed_pipeline() -> (LedgerState, Vec<JournalTid>, Vec<JournalTid>) {
    let mut l = LedgerState::default();
    l.apply(&LedgerEntry::Init { cluster_id: "c1".into(), hosts: vec!["h0".into(), "h1".into()] }).unwrap();
    l.apply(&LedgerEntry::NewEpoch { epoch: 1 }).unwrap();
    for t in 1..=4 {
        l.apply(&LedgerEntry::Begin { tid: t }).unwrap();
    }
    let a = |t: Tid, i: u64| agg(&[("gen", 1, 10 * t + i)]);
    let hosts = (0..2).map(|i| (format!("h{i}"), HostTxnRecord::new(1, &a(1, i), 100 + i))).collect();
    l.apply(&LedgerEntry::Commit { tid: 1, hosts, begin_next: None }).unwrap();
    let j = |tid: Tid, step: u64, i: u64| JournalTid {
        tid,
        first_step: step,
        last_step: step,
        steps: 1,
        aggregate: (&a(tid, i)).into(),
        committed: tid == 1,
    };
    (l, vec![j(1, 1, 0), j(2, 2, 0), j(3, 3, 0)], vec![j(1, 1, 1), j(2, 2, 1)])
}

#[test]
fn recovery_commits_the_prepared_tids_continues_the_last_journaled_one_and_uses_the_ones_begun_ahead() {
    let (l, j0, j1) = crashed_pipeline();
    // Even a coordinator restarted without a pipeline recovers it.
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    h.hello("h1", j1, vec![]);
    h.restored_all(0);
    replay_crashed_pipeline(&mut h);
}

/// After `crashed_pipeline`'s restore: tid 1 is replayed, tid 2 (prepared
/// before the crash) replayed at its journaled boundary and committed, tid
/// 3 continued and committed, and tid 4 goes next.
fn replay_crashed_pipeline(h: &mut Harness) {
    let a = |t: Tid, i: u64| agg(&[("gen", 1, 10 * t + i)]);
    h.take_sent();
    for (host, i) in [("h0", 0), ("h1", 1)] {
        h.step(host, 1, 1, a(1, i), Some(a(1, i)));
        h.prepared(host, 1, 1, a(1, i), 100 + i);
    }
    assert_eq!(cmds_for(&h.take_sent(), "h0"), vec![Cmd::Commit { tid: 1, next: Some(Start::replay_committed(2)) }],
        "tid 2 was prepared before the crash: replayed at its journaled boundary");
    for (host, i) in [("h0", 0), ("h1", 1)] {
        h.step(host, 2, 2, a(2, i), Some(a(2, i)));
        h.prepared(host, 2, 1, a(2, i), 200 + i);
    }
    assert_eq!(h.shadow.last_committed, 2, "and committed through the ledger");
    assert_eq!(h.shadow.txn(2).unwrap().hosts.get("h1").unwrap(), &HostTxnRecord::new(1, &a(2, 1), 201));
    assert_eq!(cmds_for(&h.take_sent(), "h1"), vec![Cmd::Commit { tid: 2, next: Some(Start::replay_open(3)) }]);
    assert!(matches!(h.core.phase(), Phase::Running(Txn::Open { tid: 3, mode: Mode::Replay, .. })));
    // Tid 3 (invariant 4): h0 replays its journaled step, then both go on live.
    h.step("h0", 3, 3, a(3, 0), Some(a(3, 0)));
    h.step("h1", 3, 3, agg(&[("gen", 1, 7)]), None);
    h.now = 1000;
    h.ev(Event::Heartbeat { host: "h0".into() });
    h.ev(Event::Heartbeat { host: "h1".into() });
    h.ev(Event::Tick);
    h.prepared("h0", 3, 1, a(3, 0), 300);
    h.prepared("h1", 3, 1, agg(&[("gen", 1, 7)]), 301);
    assert_eq!(h.shadow.last_committed, 3);
    assert_eq!(
        cmds_for(&h.take_sent(), "h0").last(),
        Some(&Cmd::Commit { tid: 3, next: Some(Start::live(4)) }),
        "tid 4, begun ahead and never started, goes next without a new Begin"
    );
    assert_eq!(h.shadow.tid_high_water, 4);
    assert!(h.failure().is_none(), "{:?}", h.failure());
}

/// The pipeline failed in tid 2, prepared with tid 3 running and tid 4
/// begun ahead. The next recovery reopens 2 before its new epoch, and then
/// recovers exactly as after a crash: 2 replayed at its journaled boundary
/// and committed, 3 continued, 4 used next. Nothing journaled is skipped.
#[test]
fn a_pipeline_that_failed_in_a_prepared_tid_recovers_it_and_the_tids_after_it() {
    let (mut l, j0, j1) = crashed_pipeline();
    l.apply(&LedgerEntry::Fail { tid: 2, diagnosis: "h1's Prepared of tid 2 differs".into(), reopen: true }).unwrap();
    assert_eq!(l.open_tids().collect::<Vec<_>>(), [3, 4]);
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    let actions = h.hello("h1", j1, vec![]);
    let proposed: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Propose(e) => Some(e.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(proposed, ["Reopen(2)", "NewEpoch(2)"]);
    h.restored_all(0);
    assert!(
        h.notices.iter().any(|n| matches!(n, Notice::Recovering { replay_tids, open_tid: Some(2), .. } if replay_tids[..] == [1])),
        "{:?}",
        h.notices
    );
    replay_crashed_pipeline(&mut h);
    assert!(h.shadow.txn(2).unwrap().failure.is_some(), "tid 2 keeps its earlier failure on record");
}

fn prep(tid: Tid, steps: u64, a: Aggregate, digest: u64) -> PreparedReport {
    PreparedReport { tid, steps, aggregate: a, output_digest: digest, output_count: 0 }
}

/// The ledger a pipelined leader leaves when it dies: tid 1 committed, 2 and
/// 3 open, 4 begun ahead. h0 had prepared 2 and ran a step of 3; h1 had not
/// yet prepared 2 (its `Prepare{2, next 3}` was lost with the leader).
fn kept_pipeline() -> (LedgerState, Vec<JournalTid>, Vec<JournalTid>, Resumable, Resumable) {
    // The journals are those of a crashed pipeline: what the hosts kept is
    // what they journaled.
    let (l, j0, j1) = crashed_pipeline();
    let a = |t: Tid, i: u64| agg(&[("gen", 1, 10 * t + i)]);
    let h0 = Resumable {
        last_committed: 1,
        state: HostTxnState::OpenLive,
        tid: 3,
        steps: 1,
        aggregate: a(3, 0),
        prepared: None,
        awaiting: vec![prep(2, 1, a(2, 0), 200)],
    };
    let h1 = Resumable { last_committed: 1, state: HostTxnState::OpenLive, tid: 2, steps: 1, aggregate: a(2, 1), prepared: None, awaiting: vec![] };
    (l, j0, j1, h0, h1)
}

fn recovery(h: &Harness) -> Recovery {
    h.notices.iter().rev().find_map(|n| if let Notice::Recovery(r) = n { Some(r.clone()) } else { None }).expect("a recovery notice")
}

#[test]
fn a_new_leader_continues_a_pipeline_catching_behind_hosts_up_without_a_restore() {
    let (l, j0, j1, r0, r1) = kept_pipeline();
    let a = |t: Tid, i: u64| agg(&[("gen", 1, 10 * t + i)]);
    let mut h = Harness::new(CoreConfig { pipeline_depth: 4, ..cfg() }, l);
    h.hello_with("h0", j0, vec![], Some(r0));
    h.hello_with("h1", j1, vec![], Some(r1));
    let r = recovery(&h);
    assert_eq!(r.path, RecoveryPath::Continue, "{}", r.why);
    let sent = h.take_sent();
    assert_eq!(cmds_for(&sent, "h0"), vec![Cmd::Prepare { tid: 3, next: None }]);
    assert_eq!(
        cmds_for(&sent, "h1"),
        vec![Cmd::Prepare { tid: 2, next: Some(Start::live(3)) }, Cmd::Prepare { tid: 3, next: None }],
        "the host that never got Prepare{{2, next 3}} is caught up"
    );
    // h1 prepares 2 with the step it had kept: 2 commits from h0's kept
    // report and h1's fresh one.
    h.prepared("h1", 2, 1, a(2, 1), 201);
    assert_eq!(h.shadow.last_committed, 2);
    assert_eq!(h.shadow.txn(2).unwrap().hosts.get("h0").unwrap(), &HostTxnRecord::new(1, &a(2, 0), 200));
    assert_eq!(cmds_for(&h.take_sent(), "h0"), vec![Cmd::Commit { tid: 2, next: None }]);
    h.prepared("h1", 3, 0, agg(&[]), 300);
    h.prepared("h0", 3, 1, a(3, 0), 301);
    assert_eq!(h.shadow.last_committed, 3);
    assert_eq!(
        cmds_for(&h.take_sent(), "h0"),
        vec![Cmd::Commit { tid: 3, next: Some(Start::live(4)) }],
        "tid 4, begun ahead, goes next"
    );
    assert!(h.failure().is_none(), "{:?}", h.failure());
}

#[test]
fn a_pipelined_host_whose_held_tids_do_not_fit_the_ledger_sends_everyone_to_replay() {
    let (l, j0, j1, mut r0, r1) = kept_pipeline();
    r0.awaiting[0].steps = 2;
    let mut h = Harness::new(CoreConfig { pipeline_depth: 4, ..cfg() }, l);
    h.hello_with("h0", j0, vec![], Some(r0));
    h.hello_with("h1", j1, vec![], Some(r1));
    let r = recovery(&h);
    assert_eq!(r.path, RecoveryPath::Replay);
    assert!(r.why.contains("host h0's Prepared of tid 2 says 2 steps"), "{}", r.why);
}

/// The leader died after the ledger committed 2 and 3 (3 prepared without a
/// next, e.g. no tid was begun ahead yet) and before any host got either
/// Commit: each host holds 2 awaiting and is prepared in 3. The new leader
/// sends both Commits, the last with the next Start, without a restore.
#[test]
fn hosts_holding_only_committed_tids_get_their_commits_and_go_on() {
    let a = |t: Tid, i: u64| agg(&[("gen", 1, 10 * t + i)]);
    let mut l = LedgerState::default();
    l.apply(&LedgerEntry::Init { cluster_id: "c1".into(), hosts: vec!["h0".into(), "h1".into()] }).unwrap();
    l.apply(&LedgerEntry::NewEpoch { epoch: 1 }).unwrap();
    for t in 1..=4 {
        l.apply(&LedgerEntry::Begin { tid: t }).unwrap();
    }
    for t in 1..=3 {
        let hosts = (0..2).map(|i| (format!("h{i}"), HostTxnRecord::new(1, &a(t, i), 100 * t + i))).collect();
        l.apply(&LedgerEntry::Commit { tid: t, hosts, begin_next: None }).unwrap();
    }
    let journal = |i: u64| {
        (1..=3)
            .map(|t| JournalTid { tid: t, first_step: t, last_step: t, steps: 1, aggregate: (&a(t, i)).into(), committed: t == 1 })
            .collect::<Vec<_>>()
    };
    let kept = |i: u64| Resumable {
        last_committed: 1,
        state: HostTxnState::Prepared,
        tid: 3,
        steps: 1,
        aggregate: a(3, i),
        prepared: Some(prep(3, 1, a(3, i), 300 + i)),
        awaiting: vec![prep(2, 1, a(2, i), 200 + i)],
    };
    let mut h = Harness::new(CoreConfig { pipeline_depth: 4, ..cfg() }, l);
    h.hello_with("h0", journal(0), vec![], Some(kept(0)));
    h.hello_with("h1", journal(1), vec![], Some(kept(1)));
    let r = recovery(&h);
    assert_eq!(r.path, RecoveryPath::Continue, "{}", r.why);
    assert_eq!(
        cmds_for(&h.take_sent(), "h1"),
        vec![
            Cmd::Commit { tid: 2, next: None },
            Cmd::Commit { tid: 3, next: Some(Start::live(4)) },
            Cmd::Prepare { tid: 4, next: None }
        ]
    );
    // A report that differs from the ledger's record is named instead.
    let mut h = Harness::new(CoreConfig { pipeline_depth: 4, ..cfg() }, h.shadow.clone());
    let mut bad = kept(0);
    bad.prepared = Some(prep(3, 1, a(3, 0), 999));
    h.hello_with("h0", journal(0), vec![], Some(bad));
    h.hello_with("h1", journal(1), vec![], Some(kept(1)));
    let r = recovery(&h);
    assert_eq!(r.path, RecoveryPath::Replay);
    assert!(r.why.contains("host h0's Prepared of tid 3 has output digest"), "{}", r.why);
}
