//! Flow tests of the core: set a state by driving real events, call one
//! handler, assert the exact actions (openraft's engine-test style).

use super::*;
use lockstep_journal::{Checksum, EndpointChecksums};

pub(crate) struct Harness {
    pub core: Core,
    /// The "replicated" ledger: proposals are applied here first, exactly as
    /// the raft state machine does, and the outcome fed back to the core.
    pub shadow: LedgerState,
    pub now: u64,
    pub next_conn: ConnId,
    pub conns: BTreeMap<HostId, ConnId>,
    pub sent: Vec<(HostId, Cmd)>,
    pub notices: Vec<Notice>,
    /// When set, proposals are held in `held` (proposed, not yet durable)
    /// instead of being applied at once; `apply_held` applies the oldest.
    pub hold: bool,
    pub held: VecDeque<LedgerEntry>,
    /// The `data_id` each host's Hello sends, if not its default (one per
    /// host name, the same on every Hello: a restarted agent).
    pub data_ids: BTreeMap<HostId, u64>,
}

pub(crate) fn agg(pairs: &[(&str, u64, u64)]) -> Aggregate {
    pairs.iter().map(|(e, c, h)| (e.to_string(), Checksum { count: *c, hash: *h })).collect::<EndpointChecksums>()
}

pub(crate) fn cfg() -> CoreConfig {
    CoreConfig {
        cluster_id: "c1".into(),
        hosts: vec!["h0".into(), "h1".into()],
        commit_interval_ms: 100,
        txn_steps_max: 1000,
        txn_records_max: 1_000_000,
        checkpoint_every_txns: 0,
        report_deadline_ms: 1000,
        replay_window: 1,
        pipeline_depth: 1,
    }
}

impl Harness {
    pub fn new(cfg: CoreConfig, ledger: LedgerState) -> Harness {
        let shadow = ledger.clone();
        let (core, actions) = Core::new(cfg, ledger).expect("core");
        let mut h = Harness {
            core,
            shadow,
            now: 0,
            next_conn: 1,
            conns: BTreeMap::new(),
            sent: vec![],
            notices: vec![],
            hold: false,
            held: VecDeque::new(),
            data_ids: BTreeMap::new(),
        };
        h.run(actions);
        h
    }

    /// Executes actions like the shell would; proposals are applied at once.
    pub fn run(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let mut all = Vec::new();
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match &a {
                Action::Propose(entry) if self.hold => self.held.push_back(entry.clone()),
                Action::Propose(entry) => {
                    let result = self.shadow.apply(entry);
                    let more = self.core.handle(self.now * 1000, Event::Applied { entry: entry.clone(), result });
                    queue.extend(more);
                }
                Action::Send { host, cmd, epoch } => {
                    assert_eq!(*epoch, self.shadow.epoch, "commands carry the ledger's epoch");
                    self.sent.push((host.clone(), cmd.clone()));
                }
                Action::Notice(n) => self.notices.push(n.clone()),
                _ => {}
            }
            all.push(a);
        }
        all
    }

    pub fn ev(&mut self, e: Event) -> Vec<Action> {
        let a = self.core.handle(self.now * 1000, e);
        self.run(a)
    }

    /// The shell's report that the oldest held proposal became durable.
    pub fn apply_held(&mut self) -> Vec<Action> {
        let entry = self.held.pop_front().expect("a held proposal");
        let result = self.shadow.apply(&entry);
        self.ev(Event::Applied { entry, result })
    }

    pub fn take_sent(&mut self) -> Vec<(HostId, Cmd)> {
        std::mem::take(&mut self.sent)
    }

    pub fn hello(&mut self, host: &str, journal: Vec<JournalTid>, checkpoints: Vec<Tid>) -> Vec<Action> {
        self.hello_with(host, journal, checkpoints, None)
    }

    /// A Hello offering what the host kept from its previous stream.
    pub fn hello_with(
        &mut self,
        host: &str,
        journal: Vec<JournalTid>,
        checkpoints: Vec<Tid>,
        resumable: Option<Resumable>,
    ) -> Vec<Action> {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(host.into(), conn);
        let last_step = journal.iter().map(|j| j.last_step).max().unwrap_or(0);
        let data_id = self.data_ids.get(host).copied().unwrap_or_else(|| 0x5eed_0000 + host.bytes().map(u64::from).sum::<u64>());
        self.ev(Event::Hello {
            conn,
            hello: Hello {
                protocol_version: lockstep_proto::PROTOCOL_VERSION,
                host_id: host.into(),
                cluster_id: "c1".into(),
                highest_epoch: self.shadow.epoch,
                checkpoints,
                journal,
                last_step,
                ingest_addr: String::new(),
                data_id,
                resumable,
            },
        })
    }

    pub fn step(&mut self, host: &str, tid: Tid, step: u64, a: Aggregate, journaled: Option<Aggregate>) -> Vec<Action> {
        let (mode, state) =
            if journaled.is_some() { (Mode::Replay, HostTxnState::OpenReplay) } else { (Mode::Live, HostTxnState::OpenLive) };
        self.ev(Event::Step {
            host: host.into(),
            report: StepReport { tid, step, checksums: a, journaled, state, mode },
        })
    }

    pub fn prepared(&mut self, host: &str, tid: Tid, steps: u64, a: Aggregate, digest: u64) -> Vec<Action> {
        self.ev(Event::Prepared {
            host: host.into(),
            report: PreparedReport { tid, steps, aggregate: a, output_digest: digest, output_count: 0 },
        })
    }

    pub fn restored_all(&mut self, checkpoint: Tid) {
        for h in ["h0", "h1"] {
            self.ev(Event::Restored { host: h.into(), checkpoint });
        }
    }

    pub fn failure(&self) -> Option<&Diagnosis> {
        match self.core.phase() {
            Phase::Failed(d) => Some(d),
            _ => None,
        }
    }

    /// A fresh cluster brought to Running with tid 1 open.
    pub fn running() -> Harness {
        let mut h = Harness::new(cfg(), LedgerState::default());
        h.hello("h0", vec![], vec![]);
        h.hello("h1", vec![], vec![]);
        h.restored_all(0);
        h
    }
}

fn cmds_for(sent: &[(HostId, Cmd)], host: &str) -> Vec<Cmd> {
    sent.iter().filter(|(h, _)| h == host).map(|(_, c)| c.clone()).collect()
}

#[test]
fn fresh_cluster_initialises_bumps_epoch_restores_empty_state_and_begins_tid_1() {
    let mut h = Harness::new(cfg(), LedgerState::default());
    assert!(h.shadow.is_initialised());
    h.hello("h0", vec![], vec![]);
    assert_eq!(h.core.phase(), &Phase::Joining, "waits for every host");
    h.hello("h1", vec![], vec![]);
    assert_eq!(h.shadow.epoch, 1);
    assert_eq!(cmds_for(&h.take_sent(), "h0"), vec![Cmd::Restore { checkpoint: 0 }]);
    h.restored_all(0);
    assert_eq!(cmds_for(&h.take_sent(), "h1"), vec![Cmd::Start(Start::live(1))]);
    assert!(matches!(h.core.phase(), Phase::Running(Txn::Open { tid: 1, mode: Mode::Live, .. })));
}

#[test]
fn live_transaction_commits_after_interval_and_piggybacks_next_start() {
    let mut h = Harness::running();
    h.take_sent();
    h.step("h0", 1, 1, agg(&[("gen", 3, 30)]), None);
    h.step("h0", 1, 2, agg(&[("gen", 1, 5)]), None);
    h.step("h1", 1, 1, agg(&[("gen", 2, 7)]), None);
    h.ev(Event::Tick);
    assert!(h.take_sent().is_empty(), "not due before the commit interval");
    h.now = 100;
    h.ev(Event::Tick);
    assert_eq!(cmds_for(&h.take_sent(), "h0"), vec![Cmd::Prepare { tid: 1, next: None }]);
    // A step already under way when Prepare arrived still counts.
    h.step("h1", 1, 2, agg(&[("gen", 1, 1)]), None);
    h.prepared("h0", 1, 2, agg(&[("gen", 4, 35)]), 9);
    assert!(h.take_sent().is_empty(), "no commit before every host prepared");
    h.prepared("h1", 1, 2, agg(&[("gen", 3, 8)]), 10);
    assert_eq!(cmds_for(&h.take_sent(), "h1"), vec![Cmd::Commit { tid: 1, next: Some(Start::live(2)) }]);
    let rec = h.shadow.txn(1).unwrap();
    assert_eq!(rec.status, TxnStatus::Committed);
    assert_eq!(rec.hosts.get("h0").unwrap().output_digest, 9);
    assert_eq!(rec.hosts.get("h1").unwrap().aggregate(), agg(&[("gen", 3, 8)]));
    assert_eq!(h.shadow.open_txn().map(|t| t.tid), Some(2));
}

#[test]
fn prepared_aggregate_must_equal_the_sum_of_step_reports() {
    let mut h = Harness::running();
    h.step("h0", 1, 1, agg(&[("gen", 3, 30)]), None);
    h.now = 100;
    h.ev(Event::Tick);
    h.prepared("h0", 1, 1, agg(&[("gen", 3, 31)]), 0);
    let d = h.failure().expect("failed");
    assert_eq!(d.host.as_deref(), Some("h0"));
    assert_eq!(d.tid, Some(1));
    assert_eq!(d.endpoint.as_deref(), Some("gen"));
    assert!(h.shadow.txn(1).unwrap().failure.is_some(), "failure recorded in the ledger");
}

#[test]
fn step_for_the_wrong_tid_fails_the_pipeline() {
    let mut h = Harness::running();
    h.step("h1", 7, 1, agg(&[]), None);
    let d = h.failure().expect("failed");
    assert!(d.summary.contains("tid 7"), "{d}");
    assert!(h.take_sent().iter().any(|(_, c)| matches!(c, Cmd::Stop { .. })));
}

#[test]
fn lost_host_never_lets_the_open_transaction_commit() {
    let mut h = Harness::running();
    h.step("h0", 1, 1, agg(&[("gen", 1, 1)]), None);
    h.now = 100;
    h.ev(Event::Tick);
    h.prepared("h0", 1, 1, agg(&[("gen", 1, 1)]), 0);
    let conn = h.conns["h1"];
    h.ev(Event::Disconnected { conn, host: "h1".into(), reason: "stream reset".into() });
    assert_eq!(h.core.phase(), &Phase::Joining);
    assert_eq!(h.shadow.txn(1).unwrap().status, TxnStatus::Begun, "fail closed: no commit");
    // A late Prepared of the lost transaction cannot commit it either: the
    // shell drops reports of closed streams, and a report on a fresh stream
    // before recovery sent it anything is a protocol error (table_tests).
    // Every stream was closed so that recovery starts from fresh Hellos.
    h.take_sent();
    h.hello("h0", vec![], vec![]);
    assert_eq!(h.shadow.epoch, 1, "waits for every host");
    h.hello("h1", vec![], vec![]);
    assert_eq!(h.shadow.epoch, 2);
    h.restored_all(0);
    assert_eq!(cmds_for(&h.take_sent(), "h0").last(), Some(&Cmd::Start(Start::replay_open(1))));
}

#[test]
fn missed_report_deadline_drops_the_host_and_recovers() {
    let mut h = Harness::running();
    h.now = 500;
    h.ev(Event::Heartbeat { host: "h0".into() });
    h.now = 1200;
    let actions = h.ev(Event::Tick);
    let dropped: Vec<(&str, &str)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Drop { host, why, .. } => Some((host.as_str(), why.as_str())),
            _ => None,
        })
        .collect();
    assert!(dropped[0].0 == "h1" && dropped[0].1.contains("no report or heartbeat"), "{dropped:?}");
    assert!(dropped[1..].iter().all(|(h, why)| *h == "h0" && why.contains("recovering")), "{dropped:?}");
    assert_eq!(h.core.phase(), &Phase::Joining);
}

/// A second agent under a connected host's id, with another data
/// directory, is refused while the connected stream is alive: nothing is
/// dropped and no recovery starts (the two used to replace each other in
/// turn, a new epoch each time). A restarted agent (same data id), a Hello
/// without a data id, and anyone once the connected stream has been silent
/// past the report deadline replace the stream as before.
#[test]
fn a_second_agent_under_a_connected_hosts_id_is_refused_while_the_first_is_alive() {
    let mut h = Harness::running();
    let (epoch, conn) = (h.shadow.epoch, h.conns["h0"]);
    h.data_ids.insert("h0".into(), 0xd1ff);
    let actions = h.hello("h0", vec![], vec![]);
    let refused: Vec<&String> = actions.iter().filter_map(|a| if let Action::Reject { error, .. } = a { Some(error) } else { None }).collect();
    assert_eq!(refused.len(), 1, "{actions:?}");
    assert!(refused[0].contains("two host agents run with --host-id h0") && refused[0].contains("000000000000d1ff"), "{}", refused[0]);
    assert!(!actions.iter().any(|a| matches!(a, Action::Drop { .. })), "{actions:?}");
    assert_eq!((h.core.hosts()["h0"].conn, h.shadow.epoch), (Some(conn), epoch), "the connected stream stays; no new epoch");
    assert!(matches!(h.core.phase(), Phase::Running(_)), "{:?}", h.core.phase());

    // The same data directory again (a restart): replaces the stream.
    h.data_ids.remove("h0");
    let actions = h.hello("h0", vec![], vec![]);
    assert!(actions.iter().any(|a| matches!(a, Action::Drop { conn: c, .. } if *c == conn)), "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::Reject { .. })), "{actions:?}");

    // No data id given: replaces too.
    let mut h = Harness::running();
    h.data_ids.insert("h0".into(), 0);
    let conn = h.conns["h0"];
    let actions = h.hello("h0", vec![], vec![]);
    assert!(actions.iter().any(|a| matches!(a, Action::Drop { conn: c, .. } if *c == conn)), "{actions:?}");

    // Another data directory once the connected stream is silent past the
    // deadline (half-open): accepted.
    let mut h = Harness::running();
    h.now += 1001;
    h.data_ids.insert("h1".into(), 0xd1ff);
    let conn = h.conns["h1"];
    let actions = h.hello("h1", vec![], vec![]);
    assert!(!actions.iter().any(|a| matches!(a, Action::Reject { .. })), "{actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::Drop { conn: c, .. } if *c == conn)), "{actions:?}");
}

/// A host whose disk refused a journal or sink write is a lost host, not a failed
/// pipeline: its stream is dropped naming the cause, the open tid is not
/// recorded as failed, and the pipeline waits (Joining) to recover it, as
/// for a crash. Any other host error still fails the pipeline.
#[test]
fn a_disk_write_failure_loses_the_host_and_keeps_the_open_tid() {
    let mut h = Harness::running();
    h.step("h0", 1, 1, agg(&[("gen", 1, 1)]), None);
    let conn = h.conns["h0"];
    let message = "journaling step 2 of tid 1 failed: No space left on device".to_string();
    let actions = h.ev(Event::HostError { host: "h0".into(), kind: "disk_write".into(), message, tid: 1 });
    assert!(
        actions.iter().any(|a| matches!(a, Action::Drop { conn: c, why, .. } if *c == conn && why.contains("No space left on device") && why.contains("free space"))),
        "{actions:?}"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Propose(LedgerEntry::Fail { .. }))), "{actions:?}");
    assert_eq!(h.core.phase(), &Phase::Joining);
    assert_eq!(h.shadow.txn(1).unwrap().status, TxnStatus::Begun, "tid 1 stays open, to be replayed");

    let mut h = Harness::running();
    h.ev(Event::HostError { host: "h0".into(), kind: "engine".into(), message: "boom".into(), tid: 1 });
    assert!(matches!(h.core.phase(), Phase::Failed(_)), "{:?}", h.core.phase());
}

/// A ledger with tids 1 and 2 committed and 3 open, and each host's journal.
pub(crate) fn recorded() -> (LedgerState, Vec<JournalTid>, Vec<JournalTid>) {
    let mut l = LedgerState::default();
    l.apply(&LedgerEntry::Init { cluster_id: "c1".into(), hosts: vec!["h0".into(), "h1".into()] }).unwrap();
    l.apply(&LedgerEntry::NewEpoch { epoch: 1 }).unwrap();
    l.apply(&LedgerEntry::Begin { tid: 1 }).unwrap();
    let rec = |steps, a: &Aggregate, d| HostTxnRecord::new(steps, a, d);
    let h0_1 = agg(&[("gen", 2, 20)]);
    let h1_1 = agg(&[("gen", 1, 10)]);
    l.apply(&LedgerEntry::Commit {
        tid: 1,
        hosts: [("h0".to_string(), rec(2, &h0_1, 100)), ("h1".to_string(), rec(1, &h1_1, 101))].into(),
        begin_next: Some(2),
    })
    .unwrap();
    let empty = agg(&[]);
    l.apply(&LedgerEntry::Commit {
        tid: 2,
        hosts: [("h0".to_string(), rec(0, &empty, 0)), ("h1".to_string(), rec(1, &h1_1, 102))].into(),
        begin_next: Some(3),
    })
    .unwrap();
    let j = |tid, first, steps, a: &Aggregate| JournalTid {
        tid,
        first_step: first,
        last_step: first + steps - 1,
        steps,
        aggregate: a.into(),
        committed: true,
    };
    let h0 = vec![j(1, 1, 2, &h0_1), j(3, 3, 1, &agg(&[("gen", 5, 5)]))];
    let h1 = vec![j(1, 1, 1, &h1_1), j(2, 2, 1, &h1_1)];
    (l, h0, h1)
}

#[test]
fn replay_drives_each_committed_tid_then_continues_the_open_one() {
    let (l, j0, j1) = recorded();
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    h.hello("h1", j1, vec![]);
    assert_eq!(h.shadow.epoch, 2);
    h.restored_all(0);
    assert_eq!(
        cmds_for(&h.take_sent(), "h0"),
        vec![Cmd::Restore { checkpoint: 0 }, Cmd::Start(Start::replay_committed(1))]
    );
    let a = agg(&[("gen", 2, 20)]);
    h.step("h0", 1, 1, agg(&[("gen", 1, 5)]), Some(agg(&[("gen", 1, 5)])));
    h.step("h0", 1, 2, agg(&[("gen", 1, 15)]), Some(agg(&[("gen", 1, 15)])));
    h.prepared("h0", 1, 2, a, 100);
    h.step("h1", 1, 1, agg(&[("gen", 1, 10)]), Some(agg(&[("gen", 1, 10)])));
    h.prepared("h1", 1, 1, agg(&[("gen", 1, 10)]), 101);
    assert_eq!(
        cmds_for(&h.take_sent(), "h0"),
        vec![Cmd::Commit { tid: 1, next: Some(Start::replay_committed(2)) }]
    );
    h.prepared("h0", 2, 0, agg(&[]), 0);
    h.step("h1", 2, 2, agg(&[("gen", 1, 10)]), Some(agg(&[("gen", 1, 10)])));
    h.prepared("h1", 2, 1, agg(&[("gen", 1, 10)]), 102);
    assert_eq!(cmds_for(&h.take_sent(), "h0"), vec![Cmd::Commit { tid: 2, next: Some(Start::replay_open(3)) }]);
    assert!(matches!(h.core.phase(), Phase::Running(Txn::Open { tid: 3, mode: Mode::Replay, .. })));
    assert_eq!(h.shadow.epoch, 2);
    assert_eq!(h.shadow.last_committed, 2, "replay writes no new commits");
    // Open tid 3: replayed step, then live steps, then a normal commit.
    h.step("h0", 3, 3, agg(&[("gen", 5, 5)]), Some(agg(&[("gen", 5, 5)])));
    h.step("h0", 3, 4, agg(&[("gen", 1, 1)]), None);
    h.step("h1", 3, 3, agg(&[("gen", 1, 1)]), None);
    h.now = 1000;
    h.ev(Event::Heartbeat { host: "h0".into() });
    h.ev(Event::Heartbeat { host: "h1".into() });
    h.ev(Event::Tick);
    h.prepared("h0", 3, 2, agg(&[("gen", 6, 6)]), 7);
    h.prepared("h1", 3, 1, agg(&[("gen", 1, 1)]), 8);
    assert_eq!(h.shadow.txn(3).unwrap().status, TxnStatus::Committed);
    assert!(h.failure().is_none());
}

#[test]
fn divergent_replay_is_caught_at_the_first_divergent_step_with_a_precise_diagnosis() {
    let (l, j0, j1) = recorded();
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    h.hello("h1", j1, vec![]);
    h.restored_all(0);
    h.step("h0", 1, 1, agg(&[("gen", 1, 5)]), Some(agg(&[("gen", 1, 5)])));
    h.step("h0", 1, 2, agg(&[("gen", 1, 16)]), Some(agg(&[("gen", 1, 15)])));
    let d = h.failure().expect("failed").clone();
    assert_eq!(d.host.as_deref(), Some("h0"));
    assert_eq!(d.tid, Some(1));
    assert_eq!(d.step, Some(2));
    assert_eq!(d.endpoint.as_deref(), Some("gen"));
    assert!(d.expected.unwrap().contains("hash 0x000000000000000f"));
    assert!(d.summary.contains("hash differs"), "{}", d.summary);
}

/// `recorded()`'s committed tids 1 and 2 replayed exactly as recorded.
fn replay_recorded_committed(h: &mut Harness) {
    h.step("h0", 1, 1, agg(&[("gen", 1, 5)]), Some(agg(&[("gen", 1, 5)])));
    h.step("h0", 1, 2, agg(&[("gen", 1, 15)]), Some(agg(&[("gen", 1, 15)])));
    h.prepared("h0", 1, 2, agg(&[("gen", 2, 20)]), 100);
    h.step("h1", 1, 1, agg(&[("gen", 1, 10)]), Some(agg(&[("gen", 1, 10)])));
    h.prepared("h1", 1, 1, agg(&[("gen", 1, 10)]), 101);
    h.prepared("h0", 2, 0, agg(&[]), 0);
    h.step("h1", 2, 2, agg(&[("gen", 1, 10)]), Some(agg(&[("gen", 1, 10)])));
    h.prepared("h1", 2, 1, agg(&[("gen", 1, 10)]), 102);
}

fn proposed(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Propose(e) => Some(e.to_string()),
            _ => None,
        })
        .collect()
}

/// The pipeline fails in the open tid 3 (its replay diverges on h0). The
/// tid is recorded failed for reopening, and the next recovery (here an
/// operator's Resume) begins it again before the new epoch and replays
/// its journaled steps: input acknowledged in it is not skipped, and the
/// fixed host commits it normally.
#[test]
fn a_tid_the_pipeline_failed_in_is_reopened_and_replayed_by_the_next_recovery() {
    let (l, j0, j1) = recorded();
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0.clone(), vec![]);
    h.hello("h1", j1.clone(), vec![]);
    h.restored_all(0);
    replay_recorded_committed(&mut h);
    assert!(matches!(h.core.phase(), Phase::Running(Txn::Open { tid: 3, mode: Mode::Replay, .. })), "{:?}", h.core.phase());
    let actions = h.step("h0", 3, 3, agg(&[("gen", 4, 5)]), Some(agg(&[("gen", 5, 5)])));
    assert_eq!(proposed(&actions), ["Fail(3)"]);
    let d = h.failure().expect("failed").clone();
    assert_eq!((d.host.as_deref(), d.tid, d.step), (Some("h0"), Some(3), Some(3)));
    let failed = h.shadow.txn(3).unwrap().clone();
    assert_eq!((failed.status, failed.reopen), (TxnStatus::Failed, true));

    // Resume: every host says hello again; tid 3 is begun again first.
    h.ev(Event::AdminResume);
    assert_eq!(h.core.phase(), &Phase::Joining);
    h.hello("h0", j0, vec![]);
    let actions = h.hello("h1", j1, vec![]);
    assert_eq!(proposed(&actions), ["Reopen(3)", "NewEpoch(3)"]);
    let reopened = h.shadow.txn(3).unwrap();
    assert_eq!((reopened.status, reopened.reopen), (TxnStatus::Begun, false));
    assert_eq!(reopened.failure, failed.failure, "the failure stays on record");
    assert!(
        h.notices.iter().any(|n| matches!(n, Notice::Recovery(r) if r.why.starts_with("tids [3], in which the pipeline failed, are reopened"))),
        "{:?}",
        h.notices
    );
    h.take_sent();
    h.restored_all(0);
    replay_recorded_committed(&mut h);
    assert_eq!(cmds_for(&h.take_sent(), "h0").last(), Some(&Cmd::Commit { tid: 2, next: Some(Start::replay_open(3)) }));

    // Fixed: h0 replays tid 3 as journaled, then both go on live.
    h.step("h0", 3, 3, agg(&[("gen", 5, 5)]), Some(agg(&[("gen", 5, 5)])));
    h.step("h1", 3, 3, agg(&[("gen", 1, 1)]), None);
    h.now = 1000;
    h.ev(Event::Heartbeat { host: "h0".into() });
    h.ev(Event::Heartbeat { host: "h1".into() });
    h.ev(Event::Tick);
    h.prepared("h0", 3, 1, agg(&[("gen", 5, 5)]), 7);
    h.prepared("h1", 3, 1, agg(&[("gen", 1, 1)]), 8);
    assert!(h.failure().is_none(), "{:?}", h.failure());
    assert_eq!(h.shadow.txn(3).unwrap().status, TxnStatus::Committed);
    assert_eq!(h.shadow.txn(3).unwrap().hosts.get("h0").unwrap().aggregate(), agg(&[("gen", 5, 5)]));
}

/// A tid failed by a build that gave failed tids up (its `Fail` has no
/// `reopen`) stays failed: that build began the next tids on a state
/// without the tid's input, so replaying it now would count it twice.
#[test]
fn a_tid_failed_by_an_older_build_stays_behind() {
    let (mut l, j0, j1) = recorded();
    let old: LedgerEntry = serde_json::from_str(r#"{"Fail":{"tid":3,"diagnosis":"replay diverged"}}"#).unwrap();
    l.apply(&old).unwrap();
    assert!(!l.txn(3).unwrap().reopen);
    assert!(l.apply(&LedgerEntry::Reopen { tid: 3 }).is_err(), "the ledger refuses to reopen it");
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    let actions = h.hello("h1", j1, vec![]);
    assert_eq!(proposed(&actions), ["NewEpoch(2)"]);
    h.restored_all(0);
    replay_recorded_committed(&mut h);
    assert!(matches!(h.core.phase(), Phase::Running(Txn::Open { tid: 4, mode: Mode::Live, .. })), "{:?}", h.core.phase());
    assert_eq!(h.shadow.txn(3).unwrap().status, TxnStatus::Failed);
}

#[test]
fn replayed_output_digest_must_match_the_ledger() {
    let (l, j0, j1) = recorded();
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    h.hello("h1", j1, vec![]);
    h.restored_all(0);
    h.step("h1", 1, 1, agg(&[("gen", 1, 10)]), Some(agg(&[("gen", 1, 10)])));
    h.prepared("h1", 1, 1, agg(&[("gen", 1, 10)]), 999);
    let d = h.failure().expect("failed");
    assert_eq!((d.host.as_deref(), d.tid), (Some("h1"), Some(1)));
    assert!(d.summary.contains("output digest"), "{d}");
}

#[test]
fn endpoint_present_on_one_side_only_is_named() {
    let (l, j0, j1) = recorded();
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    h.hello("h1", j1, vec![]);
    h.restored_all(0);
    h.step("h1", 1, 1, agg(&[("gen", 1, 10), ("push", 1, 1)]), Some(agg(&[("gen", 1, 10)])));
    let d = h.failure().expect("failed");
    assert_eq!(d.endpoint.as_deref(), Some("push"));
    assert!(d.summary.contains("one side only"), "{d}");
}

#[test]
fn journal_naming_a_tid_the_ledger_never_began_fails_at_startup() {
    let (l, mut j0, j1) = recorded();
    j0.push(JournalTid { tid: 9, first_step: 7, last_step: 7, steps: 1, aggregate: agg(&[]).into(), committed: false });
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    h.hello("h1", j1, vec![]);
    let d = h.failure().expect("failed");
    assert_eq!((d.host.as_deref(), d.tid), (Some("h0"), Some(9)));
    assert!(d.summary.contains("never began"));
}

#[test]
fn journal_lacking_a_committed_tid_fails_at_startup() {
    let (l, j0, mut j1) = recorded();
    j1.remove(1);
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    h.hello("h1", j1, vec![]);
    let d = h.failure().expect("failed");
    assert_eq!((d.host.as_deref(), d.tid), (Some("h1"), Some(2)));
    assert!(d.summary.contains("lacks tid 2"));
}

/// A host that comes back with another data directory (a lost volume
/// replaced by an empty one) and a journal that lacks committed tids: the
/// diagnosis says the data directory changed, naming both ids.
#[test]
fn a_journal_from_another_data_directory_is_named_in_the_diagnosis() {
    let (l, j0, _j1) = recorded();
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    h.ev(Event::Disconnected { conn: h.conns["h0"], host: "h0".into(), reason: "volume lost".into() });
    h.data_ids.insert("h0".into(), 0xfeed);
    h.hello("h0", vec![], vec![]);
    h.hello("h1", vec![], vec![]);
    let d = h.failure().expect("failed");
    assert_eq!(d.host.as_deref(), Some("h0"), "{d}");
    assert!(d.hint.contains("came back with another data directory") && d.hint.contains("000000000000feed"), "{}", d.hint);
}

/// A host that lost its volume holds none of the complete checkpoints, so
/// recovery would have to start from the empty state, where the healthy
/// host's journal (collected up to the checkpoint) no longer reaches. The
/// diagnosis names the host that lost its data, not the healthy one, even
/// when the healthy one is checked first by name.
#[test]
fn a_host_that_lost_its_checkpoints_is_named_not_the_host_whose_journal_was_collected() {
    let (mut l, j0, _j1) = recorded_n(6, false);
    l.apply(&LedgerEntry::CheckpointComplete { tid: 4 }).unwrap();
    let mut h = Harness::new(cfg(), l);
    // h0 kept checkpoint 4 and collected its journal up to it.
    h.hello("h0", j0.into_iter().filter(|j| j.tid > 4).collect(), vec![4]);
    h.data_ids.insert("h1".into(), 0xfeed);
    h.hello("h1", vec![], vec![]);
    let d = h.failure().expect("failed");
    assert_eq!(d.host.as_deref(), Some("h1"), "{d}");
    assert!(d.summary.contains("lacks tid 1"), "{d}");
}

#[test]
fn hellos_from_strangers_are_rejected_with_a_clear_error() {
    let mut h = Harness::new(cfg(), LedgerState::default());
    let mut hello = Hello {
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
    let reject = |a: Vec<Action>| match &a[..] {
        [Action::Reject { error, .. }] => error.clone(),
        other => panic!("expected a rejection, got {other:?}"),
    };
    assert!(reject(h.ev(Event::Hello { conn: 1, hello: hello.clone() })).contains("unknown host id \"h9\""));
    hello.host_id = "h0".into();
    hello.cluster_id = "other".into();
    assert!(reject(h.ev(Event::Hello { conn: 2, hello: hello.clone() })).contains("belongs to cluster \"other\""));
    hello.cluster_id = "c1".into();
    hello.highest_epoch = 5;
    let stale = reject(h.ev(Event::Hello { conn: 3, hello: hello.clone() }));
    assert!(stale.contains("epoch 5") && stale.contains("a newer leader took over") && stale.contains("--data-dir"), "{stale}");
    hello.highest_epoch = 0;
    hello.protocol_version = 99;
    assert!(reject(h.ev(Event::Hello { conn: 4, hello })).contains("protocol version 99"));
}

#[test]
fn checkpoint_happens_between_transactions_and_is_recorded_when_every_host_confirms() {
    let mut h = Harness::running();
    h.ev(Event::AdminCheckpoint);
    h.now = 100;
    h.ev(Event::Tick);
    h.prepared("h0", 1, 0, agg(&[]), 0);
    h.prepared("h1", 1, 0, agg(&[]), 0);
    let sent = cmds_for(&h.take_sent(), "h0");
    assert_eq!(sent[sent.len() - 2..], [Cmd::Commit { tid: 1, next: None }, Cmd::Checkpoint { tid: 1 }]);
    assert_eq!(h.shadow.open_txn(), None, "no transaction open during a checkpoint");
    h.ev(Event::CheckpointDone { host: "h0".into(), tid: 1 });
    assert!(h.shadow.checkpoints.is_empty());
    h.ev(Event::CheckpointDone { host: "h1".into(), tid: 1 });
    assert_eq!(h.shadow.checkpoints, vec![1]);
    assert_eq!(
        cmds_for(&h.take_sent(), "h1"),
        vec![Cmd::CheckpointComplete { tid: 1 }, Cmd::Start(Start::live(2))]
    );
}

#[test]
fn tids_never_go_backwards_across_recoveries() {
    let mut h = Harness::running();
    let mut seen = vec![];
    for round in 0..5 {
        let tid = match h.core.phase() {
            Phase::Running(Txn::Open { tid, .. }) => *tid,
            p => panic!("round {round}: {p:?}"),
        };
        seen.push(tid);
        h.now += 100;
        h.ev(Event::Heartbeat { host: "h0".into() });
        h.ev(Event::Heartbeat { host: "h1".into() });
        h.ev(Event::Tick);
        h.prepared("h0", tid, 0, agg(&[]), 0);
        h.prepared("h1", tid, 0, agg(&[]), 0);
        // Lose a host after every commit; recovery continues the open tid.
        let conn = h.conns["h0"];
        h.ev(Event::Disconnected { conn, host: "h0".into(), reason: "kill".into() });
        h.hello("h0", h_journal(&h, "h0"), vec![]);
        h.hello("h1", h_journal(&h, "h1"), vec![]);
        h.restored_all(0);
        // Replay of committed tids: every host prepares empty.
        while let Phase::Replaying { tid, .. } = h.core.phase().clone() {
            h.prepared("h0", tid, 0, agg(&[]), 0);
            h.prepared("h1", tid, 0, agg(&[]), 0);
        }
        assert!(h.failure().is_none(), "{:?}", h.failure());
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

fn h_journal(h: &Harness, _host: &str) -> Vec<JournalTid> {
    // Empty steps: commit markers only, as a host with no input would have.
    h.shadow
        .txns
        .values()
        .filter(|t| t.status == TxnStatus::Committed)
        .map(|t| JournalTid { tid: t.tid, first_step: 0, last_step: 0, steps: 0, aggregate: agg(&[]).into(), committed: true })
        .collect()
}

#[test]
fn a_commit_entry_this_core_did_not_propose_fails_instead_of_guessing() {
    let mut h = Harness::running();
    h.hold = true;
    h.now = 100;
    h.ev(Event::Tick);
    h.prepared("h0", 1, 0, agg(&[]), 0);
    h.prepared("h1", 1, 0, agg(&[]), 0);
    assert!(matches!(h.core.phase(), Phase::Running(Txn::Committing { tid: 1, checkpoint_after: false })));
    // Another writer's Commit(1) lands first, without the next Begin.
    let foreign = LedgerEntry::Commit {
        tid: 1,
        hosts: ["h0", "h1"].iter().map(|x| (x.to_string(), HostTxnRecord::default())).collect(),
        begin_next: None,
    };
    let result = h.shadow.apply(&foreign);
    assert_eq!(result, Ok(()));
    h.ev(Event::Applied { entry: foreign, result });
    let d = h.failure().expect("failed, not panicked");
    assert!(d.summary.contains("not the entry this coordinator proposed"), "{d}");
}

// ------------------------------------------------- replay at each host's pace

/// A ledger with tids 1..=n committed (and tid n+1 open if `open`), in
/// which each host journaled one step per tid: host i's step of tid t is
/// step t with one record hashed `10 t + i`, and its output digest `100 t + i`.
fn recorded_n(n: Tid, open: bool) -> (LedgerState, Vec<JournalTid>, Vec<JournalTid>) {
    let mut l = LedgerState::default();
    l.apply(&LedgerEntry::Init { cluster_id: "c1".into(), hosts: vec!["h0".into(), "h1".into()] }).unwrap();
    l.apply(&LedgerEntry::NewEpoch { epoch: 1 }).unwrap();
    l.apply(&LedgerEntry::Begin { tid: 1 }).unwrap();
    for t in 1..=n {
        let hosts = (0..2).map(|i| (format!("h{i}"), HostTxnRecord::new(1, &step_agg(t, i), 100 * t + i))).collect();
        let begin_next = (t < n || open).then_some(t + 1);
        l.apply(&LedgerEntry::Commit { tid: t, hosts, begin_next }).unwrap();
    }
    let journal = |i| {
        (1..=n)
            .map(|t| JournalTid { tid: t, first_step: t, last_step: t, steps: 1, aggregate: step_agg(t, i).into(), committed: true })
            .collect()
    };
    (l, journal(0), journal(1))
}

fn step_agg(t: Tid, host: u64) -> Aggregate {
    agg(&[("gen", 1, 10 * t + host)])
}

/// `recorded_n` restored on both hosts: every host at tid 1 of the replay.
fn replaying_n(n: Tid, open: bool) -> Harness {
    let (l, j0, j1) = recorded_n(n, open);
    let mut h = Harness::new(cfg(), l);
    h.hello("h0", j0, vec![]);
    h.hello("h1", j1, vec![]);
    h.restored_all(0);
    assert_eq!(cmds_for(&h.take_sent(), "h1"), vec![Cmd::Restore { checkpoint: 0 }, Cmd::Start(Start::replay_committed(1))]);
    h.notices.clear();
    h
}

/// Host `host` (h0 or h1) re-runs its journaled step of tid `t` and
/// prepares it exactly as the ledger recorded.
fn replay_tid(h: &mut Harness, host: &str, t: Tid) {
    let i = if host == "h0" { 0 } else { 1 };
    h.step(host, t, t, step_agg(t, i), Some(step_agg(t, i)));
    h.prepared(host, t, 1, step_agg(t, i), 100 * t + i);
}

fn replayed_notices(h: &Harness) -> Vec<(Tid, u64)> {
    h.notices
        .iter()
        .filter_map(|n| match n {
            Notice::Committed { tid, replayed: true, records } => Some((*tid, *records)),
            _ => None,
        })
        .collect()
}

#[test]
fn each_host_moves_through_the_replay_queue_at_its_own_pace() {
    let mut h = replaying_n(4, true);
    // h0 runs ahead: each of its verified tids is committed on it alone,
    // with its next tid, without waiting for h1.
    for t in 1..=3 {
        replay_tid(&mut h, "h0", t);
        let sent = h.take_sent();
        assert_eq!(sent, vec![("h0".into(), Cmd::Commit { tid: t, next: Some(Start::replay_committed(t + 1)) })]);
        h.ev(Event::Committed { host: "h0".into(), tid: t });
    }
    assert!(replayed_notices(&h).is_empty(), "a tid counts as replayed once every host passed it");
    match h.core.phase() {
        Phase::Replaying { tid, at, .. } => {
            assert_eq!(*tid, 1, "the slowest host's tid");
            assert_eq!((at["h0"], at["h1"]), (4, 1));
        }
        p => panic!("{p:?}"),
    }
    // h1 catches up; every tid it passes is now passed by both.
    for t in 1..=3 {
        replay_tid(&mut h, "h1", t);
        assert_eq!(h.take_sent(), vec![("h1".into(), Cmd::Commit { tid: t, next: Some(Start::replay_committed(t + 1)) })]);
    }
    assert_eq!(replayed_notices(&h), vec![(1, 2), (2, 2), (3, 2)], "one notice per tid, records of both hosts");
    assert!(h.failure().is_none());
    assert_eq!((h.shadow.last_committed, h.shadow.epoch), (4, 2), "replay writes nothing to the ledger");
}

#[test]
fn the_open_last_tid_starts_only_when_every_host_is_through() {
    let mut h = replaying_n(3, true);
    for t in 1..=3 {
        replay_tid(&mut h, "h0", t);
    }
    for t in 1..=2 {
        replay_tid(&mut h, "h1", t);
    }
    // h0 is prepared in the last committed tid and waits: no Commit(3), no
    // Start of the open tid 4, while h1 has not passed tid 3.
    let sent = h.take_sent();
    assert!(!sent.iter().any(|(_, c)| matches!(c, Cmd::Commit { tid: 3, .. } | Cmd::Start(_))), "{sent:?}");
    assert!(matches!(h.core.phase(), Phase::Replaying { tid: 3, .. }));
    replay_tid(&mut h, "h1", 3);
    let commit = Cmd::Commit { tid: 3, next: Some(Start::replay_open(4)) };
    assert_eq!(h.take_sent(), vec![("h0".into(), commit.clone()), ("h1".into(), commit)]);
    assert!(matches!(h.core.phase(), Phase::Running(Txn::Open { tid: 4, mode: Mode::Replay, .. })));
    assert_eq!(replayed_notices(&h).last(), Some(&(3, 2)));

    // With no tid open, the next tid is begun once every host is through.
    let mut h = replaying_n(2, false);
    replay_tid(&mut h, "h1", 1);
    replay_tid(&mut h, "h1", 2);
    replay_tid(&mut h, "h0", 1);
    assert_eq!(h.shadow.tid_high_water, 2, "nothing begun while h0 is behind");
    h.take_sent();
    replay_tid(&mut h, "h0", 2);
    let sent = h.take_sent();
    assert_eq!(cmds_for(&sent, "h0"), vec![Cmd::Commit { tid: 2, next: None }, Cmd::Start(Start::live(3))]);
    assert_eq!(cmds_for(&sent, "h1"), vec![Cmd::Commit { tid: 2, next: None }, Cmd::Start(Start::live(3))]);
}

#[test]
fn a_divergence_on_a_host_behind_the_others_fails_with_its_diagnosis() {
    // A replayed step of h1 differs from its journal while h0 is two tids
    // ahead (and prepared in the last one).
    let mut h = replaying_n(3, true);
    for t in 1..=3 {
        replay_tid(&mut h, "h0", t);
    }
    replay_tid(&mut h, "h1", 1);
    h.take_sent();
    h.step("h1", 2, 2, agg(&[("gen", 1, 999)]), Some(step_agg(2, 1)));
    let d = h.failure().expect("failed").clone();
    assert_eq!((d.host.as_deref(), d.tid, d.step, d.endpoint.as_deref()), (Some("h1"), Some(2), Some(2), Some("gen")));
    assert_eq!(d.expected.as_deref(), Some("(count 1, hash 0x0000000000000015)"));
    assert_eq!(d.actual.as_deref(), Some("(count 1, hash 0x00000000000003e7)"));
    let stopped: Vec<HostId> = h.take_sent().into_iter().filter(|(_, c)| matches!(c, Cmd::Stop { .. })).map(|(h, _)| h).collect();
    assert_eq!(stopped, vec!["h0".to_string(), "h1".to_string()], "every host stops, the one ahead too");

    // The output digest of a host behind is held to the ledger's record
    // the same way.
    let mut h = replaying_n(3, true);
    replay_tid(&mut h, "h0", 1);
    replay_tid(&mut h, "h0", 2);
    h.step("h1", 1, 1, step_agg(1, 1), Some(step_agg(1, 1)));
    h.prepared("h1", 1, 1, step_agg(1, 1), 7);
    let d = h.failure().expect("failed");
    assert_eq!((d.host.as_deref(), d.tid), (Some("h1"), Some(1)));
    assert_eq!(d.expected.as_deref(), Some("output digest 0x0000000000000065"));
    assert!(d.summary.contains("output digest"), "{d}");
}

#[test]
fn a_host_lost_mid_replay_sends_every_host_back_to_recovery() {
    let mut h = replaying_n(3, true);
    replay_tid(&mut h, "h0", 1);
    replay_tid(&mut h, "h0", 2);
    h.take_sent();
    let conn = h.conns["h1"];
    let actions = h.ev(Event::Disconnected { conn, host: "h1".into(), reason: "stream reset".into() });
    assert_eq!(h.core.phase(), &Phase::Joining);
    assert!(
        actions.iter().any(|a| matches!(a, Action::Drop { host, .. } if host == "h0")),
        "the host ahead is sent back too: {actions:?}"
    );
    // Once both are back, recovery restores and replays from the start,
    // every host from the first tid again.
    let (_, j0, j1) = recorded_n(3, true);
    h.hello("h0", j0, vec![]);
    h.hello("h1", j1, vec![]);
    h.restored_all(0);
    let sent = h.take_sent();
    for host in ["h0", "h1"] {
        assert_eq!(cmds_for(&sent, host), vec![Cmd::Restore { checkpoint: 0 }, Cmd::Start(Start::replay_committed(1))]);
    }
    assert!(matches!(h.core.phase(), Phase::Replaying { tid: 1, .. }));
}

#[test]
fn a_step_after_the_hosts_prepared_is_a_protocol_violation() {
    let mut h = replaying_n(2, true);
    replay_tid(&mut h, "h0", 1);
    replay_tid(&mut h, "h0", 2);
    // h0 waits prepared in tid 2 for h1; it must run no further step.
    h.step("h0", 2, 3, step_agg(2, 0), Some(step_agg(2, 0)));
    let d = h.failure().expect("failed");
    assert!(d.summary.contains("step reported after this host's Prepared for tid 2"), "{d}");
}

// ------------------------------------------------------------- replay window

/// `recorded_n` restored on both hosts with a replay window of `window`.
fn replaying_window(n: Tid, open: bool, window: u64) -> Harness {
    let (l, j0, j1) = recorded_n(n, open);
    let mut h = Harness::new(CoreConfig { replay_window: window, ..cfg() }, l);
    h.hello("h0", j0, vec![]);
    h.hello("h1", j1, vec![]);
    h.restored_all(0);
    h.notices.clear();
    h
}

#[test]
fn a_replay_window_starts_tids_ahead_and_commits_each_one_as_it_verifies() {
    let mut h = replaying_window(5, true, 3);
    let starts = |upto: Tid| (1..=upto).map(|t| Cmd::Start(Start::replay_committed(t))).collect::<Vec<_>>();
    let sent = h.take_sent();
    for host in ["h0", "h1"] {
        let mut want = vec![Cmd::Restore { checkpoint: 0 }];
        want.extend(starts(3));
        assert_eq!(cmds_for(&sent, host), want, "the first three tids start at once");
    }
    // h0 runs ahead; each verified tid gets its Commit, carrying the Start
    // that tops the window up to three (one command per tid).
    replay_tid(&mut h, "h0", 1);
    assert_eq!(cmds_for(&h.take_sent(), "h0"), vec![Cmd::Commit { tid: 1, next: Some(Start::replay_committed(4)) }]);
    replay_tid(&mut h, "h0", 2);
    // The host's Committed for tid 1 arrives between its reports of later tids.
    h.ev(Event::Committed { host: "h0".into(), tid: 1 });
    assert_eq!(cmds_for(&h.take_sent(), "h0"), vec![Cmd::Commit { tid: 2, next: Some(Start::replay_committed(5)) }]);
    replay_tid(&mut h, "h0", 3);
    replay_tid(&mut h, "h0", 4);
    assert_eq!(
        cmds_for(&h.take_sent(), "h0"),
        vec![Cmd::Commit { tid: 3, next: None }, Cmd::Commit { tid: 4, next: None }],
        "nothing left to start: tid 5 is the last committed"
    );
    h.ev(Event::Committed { host: "h0".into(), tid: 2 });
    // Prepared in the last committed tid, h0 waits for h1.
    replay_tid(&mut h, "h0", 5);
    assert!(h.take_sent().is_empty());
    match h.core.phase() {
        Phase::Replaying { tid, at, sent, .. } => {
            assert_eq!((*tid, at["h0"], at["h1"]), (1, 5, 1));
            assert_eq!((sent["h0"], sent["h1"]), (5, 3));
        }
        p => panic!("{p:?}"),
    }
    for t in 1..=5 {
        replay_tid(&mut h, "h1", t);
    }
    let sent = h.take_sent();
    let last = Cmd::Commit { tid: 5, next: Some(Start::replay_open(6)) };
    assert_eq!(cmds_for(&sent, "h0"), vec![last.clone()]);
    assert_eq!(
        cmds_for(&sent, "h1"),
        vec![
            Cmd::Commit { tid: 1, next: Some(Start::replay_committed(4)) },
            Cmd::Commit { tid: 2, next: Some(Start::replay_committed(5)) },
            Cmd::Commit { tid: 3, next: None },
            Cmd::Commit { tid: 4, next: None },
            last,
        ]
    );
    assert!(h.failure().is_none(), "{:?}", h.failure());
    assert_eq!(replayed_notices(&h).iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert!(matches!(h.core.phase(), Phase::Running(Txn::Open { tid: 6, mode: Mode::Replay, .. })));
}

#[test]
fn a_replay_window_wider_than_the_queue_starts_every_committed_tid_once() {
    let mut h = replaying_window(2, false, 8);
    let sent = h.take_sent();
    assert_eq!(
        cmds_for(&sent, "h1"),
        vec![Cmd::Restore { checkpoint: 0 }, Cmd::Start(Start::replay_committed(1)), Cmd::Start(Start::replay_committed(2))]
    );
    replay_tid(&mut h, "h0", 1);
    assert_eq!(cmds_for(&h.take_sent(), "h0"), vec![Cmd::Commit { tid: 1, next: None }]);
}

#[test]
fn inside_a_replay_window_a_divergence_still_fails_before_its_tid_commits() {
    // h0 has tids 1-3 started; its tid 1 verifies, then a step of tid 2
    // diverges: tid 2 is never committed to h0 and every host stops, so
    // the outputs h0 holds for it are dropped unreleased.
    let mut h = replaying_window(3, true, 3);
    h.take_sent();
    replay_tid(&mut h, "h0", 1);
    h.take_sent();
    h.step("h0", 2, 2, agg(&[("gen", 1, 999)]), Some(step_agg(2, 0)));
    let d = h.failure().expect("failed").clone();
    assert_eq!((d.host.as_deref(), d.tid, d.step), (Some("h0"), Some(2), Some(2)));
    let sent = h.take_sent();
    assert!(!sent.iter().any(|(_, c)| matches!(c, Cmd::Commit { .. })), "{sent:?}");
    assert_eq!(sent.iter().filter(|(_, c)| matches!(c, Cmd::Stop { .. })).count(), 2);
}

#[test]
fn a_size_limit_prepares_at_the_step_that_reaches_it_and_the_interval_has_an_exact_due_time() {
    let mut h = Harness::new(CoreConfig { txn_steps_max: 2, ..cfg() }, LedgerState::default());
    h.hello("h0", vec![], vec![]);
    h.hello("h1", vec![], vec![]);
    h.restored_all(0);
    assert_eq!(h.core.commit_due_us(), Some(100_000), "opened at 0 with a 100 ms interval");
    h.take_sent();
    h.step("h0", 1, 1, agg(&[]), None);
    assert!(h.take_sent().is_empty());
    // The second step reaches txn_steps_max: Prepare goes out now, not at the next tick.
    h.step("h0", 1, 2, agg(&[]), None);
    assert_eq!(cmds_for(&h.take_sent(), "h1"), vec![Cmd::Prepare { tid: 1, next: None }]);
    assert_eq!(h.core.commit_due_us(), None, "nothing is due while preparing");
}
