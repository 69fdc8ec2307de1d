//! Continue or replay after every host is back (`resume::plan`): each
//! continue case carried through to the next commit, and each reason to
//! fall back to the replay path, named in the notice and the status.

use super::table_tests::kept_states;
use super::tests::{agg, cfg, recorded, Harness};
use super::*;

fn recovery(h: &Harness) -> Recovery {
    h.notices
        .iter()
        .rev()
        .find_map(|n| match n {
            Notice::Recovery(r) => Some(r.clone()),
            _ => None,
        })
        .expect("a recovery notice")
}

fn sent_to(sent: &[(HostId, Cmd)], host: &str) -> Vec<Cmd> {
    sent.iter().filter(|(h, _)| h == host).map(|(_, c)| c.clone()).collect()
}

/// A fresh core (a new leader, or a restarted coordinator) over `ledger`,
/// both hosts back with what they kept.
fn rejoin(ledger: LedgerState, j0: Vec<JournalTid>, j1: Vec<JournalTid>, r0: Option<Resumable>, r1: Option<Resumable>) -> Harness {
    let mut h = Harness::new(cfg(), ledger);
    h.hello_with("h0", j0, vec![], r0);
    h.hello_with("h1", j1, vec![], r1);
    h
}

fn idle(last_committed: Tid) -> Resumable {
    Resumable { last_committed, state: HostTxnState::Idle, tid: 0, steps: 0, aggregate: agg(&[]), prepared: None, awaiting: vec![] }
}

fn prep(tid: Tid, steps: u64, a: Aggregate, digest: u64) -> PreparedReport {
    PreparedReport { tid, steps, aggregate: a, output_digest: digest, output_count: 0 }
}

/// Prepared in `tid` after committing `last_committed`, with this report.
fn prepared_in(last_committed: Tid, tid: Tid, steps: u64, a: Aggregate, digest: u64) -> Resumable {
    Resumable {
        last_committed,
        state: HostTxnState::Prepared,
        tid,
        steps,
        aggregate: a.clone(),
        prepared: Some(prep(tid, steps, a, digest)),
        awaiting: vec![],
    }
}

/// (b) + (c): h0 open in tid 3, h1 prepared in committed tid 2. h1 gets
/// Commit(2, next 3), both get Prepare(3); tid 3 commits normally with h0's
/// kept step counted, and nothing is restored or replayed.
#[test]
fn open_and_commit_pending_hosts_continue_and_the_open_tid_commits() {
    let (l, j0, j1) = recorded();
    let (r0, r1) = kept_states();
    let mut h = rejoin(l, j0, j1, Some(r0), Some(r1));
    let r = recovery(&h);
    assert_eq!((r.path, r.epoch), (RecoveryPath::Continue, 2), "{r:?}");
    assert!(r.why.contains("h1 prepared in tid 2"), "{}", r.why);
    assert_eq!(h.core.last_recovery(), Some(&r));
    let sent = h.take_sent();
    assert_eq!(sent_to(&sent, "h0"), vec![Cmd::Prepare { tid: 3, next: None }]);
    assert_eq!(sent_to(&sent, "h1"), vec![Cmd::Commit { tid: 2, next: Some(Start::live(3)) }, Cmd::Prepare { tid: 3, next: None }]);
    assert!(!sent.iter().any(|(_, c)| matches!(c, Cmd::Restore { .. })));
    // h1 commits 2 and, before Prepare reached it, runs a live step of 3.
    h.ev(Event::Committed { host: "h1".into(), tid: 2 });
    h.step("h1", 3, 3, agg(&[("gen", 1, 1)]), None);
    // h0 repeats the same Prepared: its kept step is the seeded progress.
    h.prepared("h0", 3, 1, agg(&[("gen", 5, 5)]), 7);
    h.prepared("h1", 3, 1, agg(&[("gen", 1, 1)]), 8);
    assert!(h.failure().is_none(), "{:?}", h.failure());
    let t3 = h.shadow.txn(3).expect("tid 3");
    assert_eq!(t3.status, TxnStatus::Committed);
    assert_eq!(t3.hosts.get("h0").unwrap().steps, 1);
    assert_eq!(sent_to(&h.take_sent(), "h0"), vec![Cmd::Commit { tid: 3, next: Some(Start::live(4)) }]);
    assert_eq!(h.shadow.epoch, 2, "fenced: the new epoch is durable before anything is sent");
}

/// The seeded progress is what a kept host's Prepared is held to: a host
/// that prepares more than it said it ran fails the pipeline.
#[test]
fn a_prepared_report_that_differs_from_the_kept_progress_fails() {
    let (l, j0, j1) = recorded();
    let (r0, r1) = kept_states();
    let mut h = rejoin(l, j0, j1, Some(r0), Some(r1));
    h.prepared("h0", 3, 2, agg(&[("gen", 6, 6)]), 7);
    let d = h.failure().expect("failed");
    assert_eq!((d.host.as_deref(), d.tid), (Some("h0"), Some(3)));
}

/// (a) with a tid open: an idle host at the last commit is started in the
/// open tid, then everyone is asked to prepare.
#[test]
fn an_idle_host_is_started_in_the_open_tid() {
    let (l, j0, j1) = recorded();
    let (r0, _) = kept_states();
    let mut h = rejoin(l, j0, j1, Some(r0), Some(idle(2)));
    assert_eq!(recovery(&h).path, RecoveryPath::Continue);
    let sent = h.take_sent();
    assert_eq!(sent_to(&sent, "h1"), vec![Cmd::Start(Start::live(3)), Cmd::Prepare { tid: 3, next: None }]);
    assert!(matches!(h.core.phase(), Phase::Running(Txn::Preparing { tid: 3, mode: Mode::Live })));
    h.prepared("h0", 3, 1, agg(&[("gen", 5, 5)]), 7);
    h.prepared("h1", 3, 0, agg(&[]), 8);
    assert_eq!(h.shadow.txn(3).unwrap().status, TxnStatus::Committed);
}

/// Both hosts prepared in the open tid (the coordinator died before the
/// commit was durable): both repeat their reports and the tid commits.
#[test]
fn hosts_prepared_in_the_open_tid_repeat_their_reports() {
    let (l, j0, j1) = recorded();
    let (mut r0, _) = kept_states();
    r0.state = HostTxnState::Prepared;
    r0.prepared = Some(prep(3, 1, agg(&[("gen", 5, 5)]), 7));
    let mut h = rejoin(l, j0, j1, Some(r0), Some(prepared_in(2, 3, 0, agg(&[]), 8)));
    assert_eq!(recovery(&h).path, RecoveryPath::Continue);
    h.prepared("h0", 3, 1, agg(&[("gen", 5, 5)]), 7);
    h.prepared("h1", 3, 0, agg(&[]), 8);
    assert_eq!(h.shadow.txn(3).unwrap().status, TxnStatus::Committed);
    assert!(h.failure().is_none());
}

/// A ledger with tids 1-3 committed and none open (the coordinator died
/// while checkpointing after Commit(3)).
fn committed_through_3() -> (LedgerState, Vec<JournalTid>, Vec<JournalTid>) {
    let (mut l, mut j0, j1) = recorded();
    let a = agg(&[("gen", 5, 5)]);
    let hosts =
        [("h0".to_string(), HostTxnRecord::new(1, &a, 7)), ("h1".to_string(), HostTxnRecord::new(0, &agg(&[]), 8))].into();
    l.apply(&LedgerEntry::Commit { tid: 3, hosts, begin_next: None }).unwrap();
    j0[1].committed = true;
    (l, j0, j1)
}

/// (a) + (c) with no tid open: the pending host gets Commit(3) alone, and
/// the next tid begins.
#[test]
fn with_no_tid_open_the_pending_commit_goes_out_and_the_next_tid_begins() {
    let (l, j0, j1) = committed_through_3();
    let mut h = rejoin(l, j0, j1, Some(idle(3)), Some(prepared_in(2, 3, 0, agg(&[]), 8)));
    assert_eq!(recovery(&h).path, RecoveryPath::Continue, "{:?}", recovery(&h));
    let sent = h.take_sent();
    assert_eq!(sent_to(&sent, "h1"), vec![Cmd::Commit { tid: 3, next: None }, Cmd::Start(Start::live(4))]);
    assert_eq!(sent_to(&sent, "h0"), vec![Cmd::Start(Start::live(4))]);
    assert!(matches!(h.core.phase(), Phase::Running(Txn::Open { tid: 4, .. })));
    h.ev(Event::Committed { host: "h1".into(), tid: 3 });
    assert!(h.failure().is_none(), "{:?}", h.failure());
}

/// Each way a host's kept state can disagree with the ledger or its own
/// journal sends the pipeline down the replay path; the notice names the
/// host and what it had.
#[test]
fn every_misfit_falls_back_to_restore_and_replay_and_says_why() {
    type Bend = fn(&mut Vec<JournalTid>, &mut Option<Resumable>);
    let cases: Vec<(&str, Bend, &str)> = vec![
        ("no kept state (host restarted)", |_, r| *r = None, "host h0 kept no state to continue from"),
        (
            "idle at an older tid",
            |_, r| *r = Some(idle(1)),
            "host h0 is idle at tid 1, but the ledger's last commit is tid 2 and tid 3 is open",
        ),
        ("idle with journaled steps of the open tid", |_, r| *r = Some(idle(2)), "its journal holds 1 steps of the open tid 3"),
        (
            "open after another commit",
            |_, r| r.as_mut().unwrap().last_committed = 1,
            "host h0 is in tid 3 after committing tid 1",
        ),
        ("open with steps the journal lacks", |_, r| r.as_mut().unwrap().steps = 2, "host h0 ran 2 steps of the open tid 3"),
        (
            "open with another aggregate",
            |_, r| r.as_mut().unwrap().aggregate = agg(&[("gen", 5, 6)]),
            "but its journal holds 1 (aggregate {gen (count 5, hash 0x0000000000000005)})",
        ),
        (
            "prepared in the open tid without a report",
            |_, r| r.as_mut().unwrap().state = HostTxnState::Prepared,
            "host h0 is prepared in tid 3 but offers no Prepared report of it",
        ),
        (
            "prepared in the open tid with another report",
            |_, r| {
                let r = r.as_mut().unwrap();
                r.state = HostTxnState::Prepared;
                r.prepared = Some(prep(3, 2, agg(&[("gen", 5, 5)]), 7));
            },
            "host h0's Prepared of tid 3 says 2 steps",
        ),
        (
            "open in a tid the ledger does not have open",
            |_, r| r.as_mut().unwrap().tid = 4,
            "host h0 is open live in tid 4 after committing tid 2, but the ledger's last commit is tid 2 and tid 3 is open",
        ),
        (
            "replaying",
            |_, r| r.as_mut().unwrap().state = HostTxnState::OpenReplay,
            "host h0 is replaying in tid 3",
        ),
        (
            "prepared in the last commit with a digest the ledger did not record",
            |_, r| {
                *r = Some(prepared_in(1, 2, 0, agg(&[]), 999));
            },
            "host h0's Prepared of tid 2 has output digest 0x00000000000003e7, the ledger recorded 0x0000000000000000",
        ),
        (
            "prepared in the last commit with another aggregate",
            |_, r| {
                *r = Some(prepared_in(1, 2, 1, agg(&[("gen", 1, 1)]), 0));
            },
            "host h0's Prepared of tid 2 says 1 steps (aggregate {gen (count 1, hash 0x0000000000000001)}), the ledger's \
             record says 0",
        ),
        (
            "prepared in the last commit after an older commit",
            |_, r| {
                *r = Some(prepared_in(0, 2, 0, agg(&[]), 0));
            },
            "host h0 is prepared in tid 2 after committing tid 0",
        ),
    ];
    for (name, bend, why) in cases {
        let (l, mut j0, j1) = recorded();
        let (r0, r1) = kept_states();
        let mut r0 = Some(r0);
        bend(&mut j0, &mut r0);
        let mut h = rejoin(l, j0, j1, r0, Some(r1));
        let r = recovery(&h);
        assert_eq!(r.path, RecoveryPath::Replay, "{name}: {r:?}");
        assert!(r.why.contains(why), "{name}: {:?} lacks {why:?}", r.why);
        assert!(!r.why.contains("h1"), "{name}: h1 fits, only h0 is named: {}", r.why);
        assert_eq!(
            sent_to(&h.take_sent(), "h1"),
            vec![Cmd::Restore { checkpoint: 0 }],
            "{name}: every host is restored, including the one that fits"
        );
        assert!(matches!(h.core.phase(), Phase::Restoring { checkpoint: 0 }), "{name}");
        assert!(h.failure().is_none(), "{name}");
    }
}

/// One coordinator, one host crash: the survivor kept its state, the
/// crashed host has none, so both are restored and replay follows; the
/// notice names the host that restarted.
#[test]
fn a_crashed_host_sends_everyone_down_the_replay_path() {
    let mut h = Harness::running();
    h.step("h0", 1, 1, agg(&[("gen", 1, 1)]), None);
    let conn = h.conns["h1"];
    h.ev(Event::Disconnected { conn, host: "h1".into(), reason: "killed".into() });
    let kept = Resumable { last_committed: 0, state: HostTxnState::OpenLive, tid: 1, steps: 1, aggregate: agg(&[("gen", 1, 1)]), prepared: None, awaiting: vec![] };
    let j0 = vec![JournalTid { tid: 1, first_step: 1, last_step: 1, steps: 1, aggregate: agg(&[("gen", 1, 1)]).into(), committed: false }];
    h.take_sent();
    h.hello_with("h0", j0, vec![], Some(kept));
    h.hello_with("h1", vec![], vec![], None);
    let r = recovery(&h);
    assert_eq!(r.path, RecoveryPath::Replay);
    assert!(r.why.starts_with("host h1 kept no state"), "{}", r.why);
    assert_eq!(sent_to(&h.take_sent(), "h0"), vec![Cmd::Restore { checkpoint: 0 }]);
}
