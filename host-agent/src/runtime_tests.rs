//! The runtime's action executor against a real journal, sink and reference
//! engine, driven by core events directly (no network, no coordinator):
//! live transactions, a crash mid-transaction, replay with the journaled
//! step numbers, the open last transaction continuing live, checkpoints and
//! journal GC, exactly-once sink output, push acknowledgement after
//! durability, and the injected replay fault.

use super::*;
use crate::core::Command;
use crate::reference::{ReferenceConfig, ReferenceEngine, GENERATOR_ENDPOINT, PUSH_ENDPOINT};
use lockstep_proto::columns;
use lockstep_proto::v1::host_report::Report as R;
use std::path::Path;

struct Harness {
    agent: Agent<ReferenceEngine>,
    out: Reporter,
    rx: mpsc::Receiver<Vec<v1::HostReport>>,
    seq: u64,
    report_seq: u64,
}

impl Harness {
    async fn open(dir: &Path, fault: bool) -> Harness {
        let mut cfg = HostConfig::new("h1", vec!["http://127.0.0.1:1".into()], dir);
        cfg.step_interval = Duration::ZERO;
        let engine = ReferenceEngine::new(ReferenceConfig {
            host_id: "h1".into(),
            generator_seed: 7,
            generator_batch_max: 10,
            fault_nondeterministic_replay: fault,
            push_wait: crate::reference::PUSH_WAIT_DEFAULT,
        });
        let mut agent = Agent::open(cfg, engine).await.expect("open agent");
        // What a session does first: summarise the journal for its Hello
        // (which also tells the host which tids have commit markers).
        agent.hello().await.expect("hello");
        let (tx, rx) = mpsc::channel(100_000);
        let mut out = Reporter::new(tx);
        let actions = agent.core.handle(Event::StreamOpened);
        assert!(agent.execute(actions, &mut out).await.is_ok());
        Harness { agent, out, rx, seq: 0, report_seq: 0 }
    }

    async fn cmd(&mut self, epoch: u64, command: Command) {
        self.seq += 1;
        let actions = self.agent.core.handle(Event::Command { seq: self.seq, epoch, command });
        assert!(self.agent.execute(actions, &mut self.out).await.is_ok());
        self.flush_as_drive_loop().await;
    }

    /// Welcome and a restore of the empty state, in `epoch`: how a session
    /// of these tests starts.
    async fn join(&mut self, epoch: u64) {
        self.cmd(epoch, Command::Welcome { coordinator_id: "c".into() }).await;
        self.cmd(epoch, Command::Restore { checkpoint_tid: 0 }).await;
    }

    /// Starts live `tid` and runs `steps` steps in it, each one the core
    /// asked for.
    async fn live(&mut self, epoch: u64, tid: u64, steps: usize) {
        self.cmd(epoch, Command::Start { tid, mode: Mode::Live, prepare: false }).await;
        for i in 0..steps {
            assert!(self.step().await, "step {} of live tid {tid} did not run", i + 1);
        }
    }

    /// Flushes the queued reports when the drive loop would.
    async fn flush_as_drive_loop(&mut self) {
        let replaying = matches!(self.agent.core.next_step(), Some((_, Mode::Replay)));
        assert!(self.out.flush_unless_replaying(replaying).await.is_ok());
    }

    /// The stream ends and a new one opens (as `session` does): the core
    /// hears `StreamClosed`, then `StreamOpened`; numbering restarts.
    async fn reconnect(&mut self) {
        let closed = self.agent.core.handle(Event::StreamClosed);
        assert!(self.agent.execute(closed, &mut self.out).await.is_ok());
        let (tx, rx) = mpsc::channel(100_000);
        (self.out, self.rx, self.seq, self.report_seq) = (Reporter::new(tx), rx, 0, 0);
        let opened = self.agent.core.handle(Event::StreamOpened);
        assert!(self.agent.execute(opened, &mut self.out).await.is_ok());
    }

    /// Runs the step the core asks for, if any.
    async fn step(&mut self) -> bool {
        let Some((tid, mode)) = self.agent.core.next_step() else { return false };
        let event = match mode {
            Mode::Live => self.agent.live_step(tid).await,
            Mode::Replay => self.agent.replay_step(tid).await,
        };
        let actions = self.agent.core.handle(event);
        assert!(self.agent.execute(actions, &mut self.out).await.is_ok());
        self.flush_as_drive_loop().await;
        true
    }

    /// Waits until the sink writer has made every committed tid durable
    /// (a commit only queues its outputs; see `sink_writer.rs`).
    async fn sink_synced(&mut self) {
        self.agent.sink.sync().await.expect("the sink writer drains");
    }

    /// Reports sent since the last call, one `Vec` per message handed to
    /// the stream, checking seq numbering.
    fn raw_messages(&mut self) -> Vec<Vec<R>> {
        let mut out = Vec::new();
        while let Ok(batch) = self.rx.try_recv() {
            let mut message = Vec::new();
            for r in batch {
                self.report_seq += 1;
                assert_eq!(r.seq, self.report_seq, "reports are numbered 1, 2, 3, ...");
                message.push(r.report.expect("report body"));
            }
            out.push(message);
        }
        out
    }

    /// Reports sent since the last call, as sent, checking seq numbering.
    fn raw_reports(&mut self) -> Vec<R> {
        self.raw_messages().into_iter().flatten().collect()
    }

    /// Reports sent since the last call, each `ReplayedTids` as the
    /// `StepDone`s and `Prepared`s it stands for (as the coordinator reads it).
    fn reports(&mut self) -> Vec<R> {
        self.raw_reports().into_iter().flat_map(expand).collect()
    }
}

/// A `ReplayedTids` or `CommittedTids` batch as the single reports it
/// stands for.
fn expand(r: R) -> Vec<R> {
    if let R::CommittedTids(c) = &r {
        assert!(!c.tids.is_empty(), "an empty CommittedTids was sent");
        return c.tids.iter().map(|&tid| R::Committed(v1::Committed { tid })).collect();
    }
    let R::ReplayedTids(run) = r else { return vec![r] };
    assert!(!run.tids.is_empty(), "a ReplayedTids with no tid was sent");
    run.tids.iter().flat_map(|b| expand_tid(&run.endpoints, b)).collect()
}

/// One `ReplayedTid` entry as its `StepDone`s and `Prepared`.
fn expand_tid(endpoints: &[String], b: &v1::ReplayedTid) -> Vec<R> {
    assert!(!b.steps.is_empty() || b.prepared.is_some(), "an empty entry was sent");
    let n = endpoints.len();
    let steps: Vec<u64> = columns::steps(&b.steps).expect("whole step numbers").collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "batched steps in order: {b:?}");
    let replayed: Vec<(u64, u64)> = columns::cells(&b.replayed).expect("whole cells").collect();
    let (journaled, journaled_absent): (Vec<(u64, u64)>, &[u32]) = if b.journaled_as_replayed {
        assert!(b.journaled.is_empty() && b.journaled_absent.is_empty(), "{b:?}");
        (replayed.clone(), &b.absent)
    } else {
        (columns::cells(&b.journaled).expect("whole cells").collect(), &b.journaled_absent)
    };
    assert_eq!((replayed.len(), journaled.len()), (steps.len() * n, steps.len() * n), "{b:?}");
    let side = |cells: &[(u64, u64)], absent: &[u32], i: usize| -> Vec<v1::EndpointChecksum> {
        (0..n)
            .filter(|j| !absent.contains(&((i * n + j) as u32)))
            .map(|j| v1::EndpointChecksum { endpoint: endpoints[j].clone(), count: cells[i * n + j].0, hash: cells[i * n + j].1 })
            .collect()
    };
    let mut out: Vec<R> = steps
        .iter()
        .enumerate()
        .map(|(i, &step)| {
            R::StepDone(v1::StepDone {
                tid: b.tid,
                step,
                checksums: side(&replayed, &b.absent, i),
                journaled: side(&journaled, journaled_absent, i),
                state: v1::HostTxnState::OpenReplay as i32,
                mode: v1::TxnMode::Replay as i32,
            })
        })
        .collect();
    if let Some(p) = &b.prepared {
        let cells: Vec<(u64, u64)> = columns::cells(&p.aggregate).expect("whole cells").collect();
        assert_eq!(cells.len(), n, "one aggregate cell per endpoint: {p:?}");
        out.push(R::Prepared(v1::Prepared {
            tid: b.tid,
            steps: p.steps,
            aggregate: side(&cells, &p.absent, 0),
            output_digest: p.output_digest,
            output_count: p.output_count,
        }));
    }
    out
}

fn step_dones(reports: &[R]) -> Vec<v1::StepDone> {
    reports.iter().filter_map(|r| if let R::StepDone(s) = r { Some(s.clone()) } else { None }).collect()
}

fn prepared(reports: &[R]) -> v1::Prepared {
    let p: Vec<_> = reports.iter().filter_map(|r| if let R::Prepared(p) = r { Some(p.clone()) } else { None }).collect();
    assert_eq!(p.len(), 1, "exactly one Prepared in {reports:?}");
    p[0].clone()
}

fn errors(reports: &[R]) -> Vec<v1::HostError> {
    reports.iter().filter_map(|r| if let R::Error(e) = r { Some(e.clone()) } else { None }).collect()
}

fn sum_steps(steps: &[v1::StepDone]) -> EndpointChecksums {
    let mut agg = EndpointChecksums::new();
    for s in steps {
        for c in &s.checksums {
            agg.add(&c.endpoint, lockstep_journal::Checksum { count: c.count, hash: c.hash });
        }
    }
    agg
}

fn to_checksums(v: &[v1::EndpointChecksum]) -> EndpointChecksums {
    v.iter().map(|c| (c.endpoint.clone(), lockstep_journal::Checksum { count: c.count, hash: c.hash })).collect()
}

/// A Hello's journal summary `t` as an aggregate, from its columns over
/// the Hello's endpoint table `endpoints`.
fn summary_checksums(endpoints: &[String], t: &v1::TidSummary) -> EndpointChecksums {
    endpoints
        .iter()
        .enumerate()
        .filter(|(j, _)| !t.absent.contains(&(*j as u32)))
        .map(|(j, e)| (e.clone(), lockstep_journal::Checksum { count: t.counts[j], hash: t.hashes[j] }))
        .collect()
}

fn sink_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("sink").join("output.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sink_tids(dir: &Path) -> Vec<u64> {
    sink_lines(dir).iter().map(|l| l["tid"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_transaction_then_replay_and_continue_live_exactly_once() {
    let dir = tempfile::tempdir().unwrap();

    // ---- first life: tid 1 commits, tid 2 is open when the host dies.
    let mut h = Harness::open(dir.path(), false).await;
    h.join(1).await;
    h.live(1, 1, 5).await;
    h.cmd(1, Command::Prepare { tid: 1, next: None }).await;
    assert!(!h.step().await, "no step after Prepared");
    h.cmd(1, Command::Commit { tid: 1, next: Some((2, Mode::Live, false)) }).await;
    for _ in 0..3 {
        assert!(h.step().await);
    }
    let first = h.reports();
    assert!(errors(&first).is_empty(), "{first:?}");
    assert!(matches!(first[0], R::Restored(v1::Restored { checkpoint_tid: 0 })));
    let steps = step_dones(&first);
    assert_eq!(steps.iter().map(|s| (s.tid, s.step)).collect::<Vec<_>>(), vec![
        (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 6), (2, 7), (2, 8)
    ]);
    assert!(steps.iter().all(|s| s.journaled.is_empty() && s.mode == v1::TxnMode::Live as i32));
    assert!(steps.iter().all(|s| s.checksums.iter().map(|c| c.endpoint.as_str()).collect::<Vec<_>>() == [GENERATOR_ENDPOINT, PUSH_ENDPOINT]));
    let p1 = prepared(&first);
    assert_eq!(p1.steps, 5);
    assert_eq!(to_checksums(&p1.aggregate), sum_steps(&steps[..5]), "aggregate = sum of the step reports");
    assert!(first.iter().any(|r| matches!(r, R::Committed(v1::Committed { tid: 1 }))));
    h.sink_synced().await;
    assert_eq!(sink_tids(dir.path()), vec![1]);
    let line1 = sink_lines(dir.path())[0].clone();
    drop(h);

    // ---- second life: replay tid 1 (committed), then tid 2 (open, invariant 4).
    let mut h = Harness::open(dir.path(), false).await;
    let hello = h.agent.hello().await.unwrap();
    assert_eq!((hello.host_id.as_str(), hello.last_step, hello.highest_epoch), ("h1", 8, 1));
    assert_eq!(hello.protocol_version, lockstep_proto::PROTOCOL_VERSION);
    let summary: Vec<_> = hello.journal.iter().map(|t| (t.tid, t.first_step, t.last_step, t.steps, t.committed)).collect();
    assert_eq!(summary, vec![(1, 1, 5, 5, true), (2, 6, 8, 3, false)]);
    assert_eq!(hello.journal_endpoints, [GENERATOR_ENDPOINT, PUSH_ENDPOINT]);
    assert_eq!(summary_checksums(&hello.journal_endpoints, &hello.journal[0]), to_checksums(&p1.aggregate));
    assert!(hello.journal.iter().all(|t| t.absent.is_empty()), "every tid's steps named both endpoints");

    h.cmd(2, Command::Welcome { coordinator_id: "c".into() }).await;
    assert_eq!(h.agent.epoch_file.load().unwrap(), 2, "a higher epoch is persisted");
    h.cmd(2, Command::Restore { checkpoint_tid: 0 }).await;
    h.cmd(2, Command::Start { tid: 1, mode: Mode::Replay, prepare: false }).await;
    h.cmd(2, Command::Prepare { tid: 1, next: None }).await;
    while h.step().await {}
    let replay1 = h.reports();
    assert!(errors(&replay1).is_empty(), "{replay1:?}");
    let rsteps = step_dones(&replay1);
    assert_eq!(rsteps.iter().map(|s| s.step).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5], "journaled step numbers");
    for (r, l) in rsteps.iter().zip(&steps) {
        assert_eq!(r.checksums, r.journaled);
        assert_eq!(r.checksums, l.checksums, "replay ingests what live ingested");
        assert_eq!(r.mode, v1::TxnMode::Replay as i32);
        assert_eq!(r.state, v1::HostTxnState::OpenReplay as i32);
    }
    let rp1 = prepared(&replay1);
    assert_eq!((rp1.steps, &rp1.aggregate, rp1.output_digest, rp1.output_count), (p1.steps, &p1.aggregate, p1.output_digest, p1.output_count));

    h.cmd(2, Command::Commit { tid: 1, next: Some((2, Mode::Replay, false)) }).await;
    for _ in 0..3 {
        assert!(h.step().await);
    }
    assert!(h.step().await, "the exhaustion of tid 2's journaled steps");
    assert_eq!(h.agent.core.state(), crate::core::TxnState::OpenLive { tid: 2 }, "invariant 4: tid 2 continues live");
    assert!(h.step().await);
    assert!(h.step().await);
    h.cmd(2, Command::Prepare { tid: 2, next: None }).await;
    h.cmd(2, Command::Commit { tid: 2, next: None }).await;
    let rest = h.reports();
    assert!(errors(&rest).is_empty(), "{rest:?}");
    let s2 = step_dones(&rest);
    assert_eq!(s2.iter().map(|s| (s.step, s.mode)).collect::<Vec<_>>(), vec![
        (6, v1::TxnMode::Replay as i32),
        (7, v1::TxnMode::Replay as i32),
        (8, v1::TxnMode::Replay as i32),
        (9, v1::TxnMode::Live as i32),
        (10, v1::TxnMode::Live as i32),
    ]);
    assert_eq!(s2[..3].iter().map(|s| &s.checksums).collect::<Vec<_>>(), steps[5..].iter().map(|s| &s.checksums).collect::<Vec<_>>());
    assert_eq!(prepared(&rest).steps, 5);
    h.sink_synced().await;
    assert_eq!(sink_tids(dir.path()), vec![1, 2], "each committed tid exactly once");
    assert_eq!(sink_lines(dir.path())[0], line1, "tid 1 was not rewritten");
    let recs: Vec<_> = h.agent.journal.steps_of(2).unwrap().map(|r| r.unwrap()).map(|r| (r.step, r.prev_step, r.epoch)).collect();
    assert_eq!(recs, vec![(6, 5, 1), (7, 6, 1), (8, 7, 1), (9, 8, 2), (10, 9, 2)], "step chain survives the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_gc_and_restore_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), false).await;
    h.join(1).await;
    h.live(1, 1, 4).await;
    h.cmd(1, Command::Prepare { tid: 1, next: None }).await;
    h.cmd(1, Command::Commit { tid: 1, next: None }).await;
    h.cmd(1, Command::Checkpoint { tid: 1 }).await;
    assert_eq!(sink_tids(dir.path()), vec![1], "a checkpoint waits until the sink holds every tid it covers");
    h.cmd(1, Command::CheckpointComplete { tid: 1 }).await;
    h.live(1, 2, 3).await;
    // Invariant 5: no checkpoint with a transaction open.
    h.cmd(1, Command::Checkpoint { tid: 1 }).await;
    h.cmd(1, Command::Prepare { tid: 2, next: None }).await;
    h.cmd(1, Command::Commit { tid: 2, next: None }).await;
    let reports = h.reports();
    let errs = errors(&reports);
    assert_eq!(errs.len(), 1, "{reports:?}");
    assert_eq!((errs[0].kind.as_str(), errs[0].tid), ("protocol", 1));
    assert!(reports.iter().any(|r| matches!(r, R::CheckpointDone(v1::CheckpointDone { tid: 1 }))));
    let p2 = prepared(&reports[reports.iter().position(|r| matches!(r, R::StepDone(v1::StepDone { tid: 2, .. }))).unwrap()..]);
    let offset_after_2 = h.agent.engine.as_ref().unwrap().generator_offset();
    // One agent per data directory at a time: the old writer must be done
    // before the next agent reads the file back.
    h.sink_synced().await;
    drop(h);

    let mut h = Harness::open(dir.path(), false).await;
    let hello = h.agent.hello().await.unwrap();
    assert_eq!(hello.checkpoints, vec![1]);
    assert_eq!(hello.journal.iter().map(|t| t.tid).collect::<Vec<_>>(), vec![2], "summary after the complete checkpoint");
    h.cmd(2, Command::Welcome { coordinator_id: "c".into() }).await;
    h.cmd(2, Command::Restore { checkpoint_tid: 5 }).await;
    let errs = errors(&h.reports());
    assert_eq!((errs[0].kind.as_str(), errs[0].tid), ("checkpoint", 5), "restoring a checkpoint not held fails loudly");
    assert_eq!(h.agent.core.state(), crate::core::TxnState::Stopped);
    h.cmd(2, Command::Restore { checkpoint_tid: 1 }).await;
    h.cmd(2, Command::Start { tid: 2, mode: Mode::Replay, prepare: false }).await;
    h.cmd(2, Command::Prepare { tid: 2, next: None }).await;
    while h.step().await {}
    h.cmd(2, Command::Commit { tid: 2, next: None }).await;
    let reports = h.reports();
    assert!(errors(&reports).is_empty(), "{reports:?}");
    let rp2 = prepared(&reports);
    assert_eq!((rp2.steps, &rp2.aggregate, rp2.output_digest), (p2.steps, &p2.aggregate, p2.output_digest));
    assert_eq!(h.agent.engine.as_ref().unwrap().generator_offset(), offset_after_2);
    h.sink_synced().await;
    assert_eq!(sink_tids(dir.path()), vec![1, 2]);
    let last = sink_lines(dir.path()).pop().unwrap();
    assert_eq!(last["generator_offset"].as_u64(), Some(offset_after_2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_commands_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), false).await;
    h.cmd(3, Command::Welcome { coordinator_id: "c".into() }).await;
    h.cmd(2, Command::Restore { checkpoint_tid: 0 }).await;
    let reports = h.reports();
    let errs = errors(&reports);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].kind, "stale_epoch");
    assert_eq!(h.agent.core.state(), crate::core::TxnState::Stopped, "the stale Restore was ignored");
    drop(h);
    let h = Harness::open(dir.path(), false).await;
    assert_eq!(h.agent.core.highest_epoch(), 3, "the epoch survives a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_acknowledged_only_once_its_step_is_durable() {
    use lockstep_proto::v1::ingest_server::Ingest;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), false).await;
    let svc = h.agent.engine.as_ref().unwrap().ingest_handle();
    let push = tokio::spawn(async move {
        let records = vec![v1::Record { key: "pushed".into(), value: 5 }, v1::Record { key: "pushed".into(), value: 5 }];
        svc.push(tonic::Request::new(v1::PushRequest { records })).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!push.is_finished(), "no transaction yet: no acknowledgement");
    h.join(1).await;
    h.cmd(1, Command::Start { tid: 1, mode: Mode::Live, prepare: false }).await;
    h.step().await;
    let ack = push.await.unwrap().unwrap().into_inner();
    assert_eq!((ack.step, ack.tid), (1, 1));
    let steps = step_dones(&h.reports());
    let push_cs = steps[0].checksums.iter().find(|c| c.endpoint == PUSH_ENDPOINT).unwrap();
    assert_eq!(push_cs.count, 2, "two equal records count twice");
    let rec = h.agent.journal.steps_of(1).unwrap().next().unwrap().unwrap();
    assert!(rec.endpoints.iter().any(|e| e.endpoint == PUSH_ENDPOINT && e.count == 2));
    assert_eq!(h.agent.engine.as_ref().unwrap().get("pushed"), Some((2, 10)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_replay_fault_shows_in_the_first_replayed_step_with_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), false).await;
    h.join(1).await;
    h.live(1, 1, 4).await;
    let live = step_dones(&h.reports());
    drop(h);
    let mut h = Harness::open(dir.path(), true).await;
    h.join(2).await;
    h.cmd(2, Command::Start { tid: 1, mode: Mode::Replay, prepare: false }).await;
    h.cmd(2, Command::Prepare { tid: 1, next: None }).await;
    while h.step().await {}
    let replayed = step_dones(&h.reports());
    let diverged: Vec<u64> = replayed.iter().filter(|s| s.checksums != s.journaled).map(|s| s.step).collect();
    let first_with_records = live.iter().find(|s| s.checksums.iter().any(|c| c.count > 0)).unwrap().step;
    assert_eq!(diverged, vec![first_with_records]);
    let bad = replayed.iter().find(|s| s.step == first_with_records).unwrap();
    let (g, j) = (
        bad.checksums.iter().find(|c| c.endpoint == GENERATOR_ENDPOINT).unwrap(),
        bad.journaled.iter().find(|c| c.endpoint == GENERATOR_ENDPOINT).unwrap(),
    );
    assert_eq!(g.count + 1, j.count, "one generator record dropped");
}

/// A coordinator that dies mid-transaction: the host keeps its open tid
/// paused, offers it in the next Hello (matching its journal), prepares it
/// for the next coordinator, offers the prepared report after losing that
/// one too, repeats the same report to a third, and commits exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_transaction_survives_two_coordinator_losses_and_commits_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), false).await;
    h.join(1).await;
    h.live(1, 1, 3).await;
    let live = step_dones(&h.reports());
    h.reconnect().await;
    assert_eq!(h.agent.core.state(), crate::core::TxnState::PausedLive { tid: 1 });
    assert!(!h.step().await, "paused: no step without a coordinator's word");

    let hello = h.agent.hello().await.unwrap();
    let r = hello.resumable.expect("an open live tid is offered");
    assert_eq!((r.last_committed_tid, r.state, r.tid, r.steps), (0, v1::HostTxnState::OpenLive as i32, 1, 3));
    assert_eq!(to_checksums(&r.aggregate), sum_steps(&live), "what the host ran");
    assert_eq!(summary_checksums(&hello.journal_endpoints, &hello.journal[0]), to_checksums(&r.aggregate), "= what it journaled");
    assert!(r.prepared.is_none());

    h.cmd(2, Command::Welcome { coordinator_id: "c2".into() }).await;
    h.cmd(2, Command::Prepare { tid: 1, next: None }).await;
    let p = prepared(&h.reports());
    assert_eq!(p.steps, 3);
    h.reconnect().await;
    let r = h.agent.hello().await.unwrap().resumable.expect("a prepared tid is offered");
    assert_eq!((r.state, r.tid, r.steps), (v1::HostTxnState::Prepared as i32, 1, 3));
    assert_eq!(r.prepared.as_ref(), Some(&p), "with the report it sent");

    h.cmd(3, Command::Welcome { coordinator_id: "c3".into() }).await;
    h.cmd(3, Command::Prepare { tid: 1, next: None }).await;
    assert_eq!(prepared(&h.reports()), p, "the same report again, nothing taken twice");
    h.cmd(3, Command::Commit { tid: 1, next: None }).await;
    let reports = h.reports();
    assert!(errors(&reports).is_empty(), "{reports:?}");
    assert!(reports.iter().any(|r| matches!(r, R::Committed(v1::Committed { tid: 1 }))));
    h.sink_synced().await;
    assert_eq!(sink_tids(dir.path()), vec![1]);
    assert_eq!(sink_lines(dir.path())[0]["rows"].as_array().map(Vec::len), Some(p.output_count as usize));
    h.reconnect().await;
    let r = h.agent.hello().await.unwrap().resumable.expect("idle is offered");
    assert_eq!((r.last_committed_tid, r.state, r.tid), (1, v1::HostTxnState::Idle as i32, 0));
}

#[test]
fn a_redirect_names_the_leader_as_a_url() {
    let with = |code, leader: Option<&str>| {
        let mut s = tonic::Status::new(code, "not the leader");
        if let Some(l) = leader {
            s.metadata_mut().insert(lockstep_proto::LEADER_METADATA_KEY, l.parse().unwrap());
        }
        leader_redirect(&s, false)
    };
    assert_eq!(with(tonic::Code::Unavailable, Some("127.0.0.1:50052")), Some("http://127.0.0.1:50052".into()));
    assert_eq!(with(tonic::Code::Unavailable, Some("https://c2:443")), None, "TLS towards a plaintext agent: refused");
    assert_eq!(with(tonic::Code::Unavailable, None), None, "election in progress: no leader named");
    assert_eq!(with(tonic::Code::Unavailable, Some(" ")), None);
    assert_eq!(with(tonic::Code::FailedPrecondition, Some("127.0.0.1:1")), None, "only UNAVAILABLE redirects");
}

/// A data directory that is a file is refused by name before anything is
/// created or opened.
#[tokio::test]
async fn a_data_directory_that_is_a_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let engine = ReferenceEngine::new(ReferenceConfig {
        host_id: "h1".into(),
        generator_seed: 7,
        generator_batch_max: 10,
        fault_nondeterministic_replay: false,
        push_wait: crate::reference::PUSH_WAIT_DEFAULT,
    });
    let err = Agent::open(HostConfig::new("h1", vec!["http://127.0.0.1:1".into()], &file), engine).await.err().expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, AgentError::Config(_)) && msg.contains(&file.display().to_string()) && msg.contains("not a directory"), "{msg}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x", "the file is left alone");
}

/// `--coordinator` takes `host:port` or a URL; anything tonic could not
/// connect to is refused at startup, naming it, instead of being retried.
#[test]
fn a_coordinator_address_becomes_a_url_or_is_refused_by_name() {
    assert_eq!(coordinator_url("127.0.0.1:50051", false).as_deref(), Ok("http://127.0.0.1:50051"));
    assert_eq!(coordinator_url(" http://c-0.peers:50051 ", false).as_deref(), Ok("http://c-0.peers:50051"));
    for bad in ["", "127.0.0.1", "http://", "http://c 0:1", "::::", "grpc://c:1"] {
        let err = coordinator_url(bad, false).expect_err(bad);
        assert!(err.contains(&format!("{:?}", bad.trim())) && err.contains("host:port"), "{bad:?}: {err}");
    }
}

/// With TLS files the bare `host:port` (and a redirect's) becomes
/// `https://`; a scheme that contradicts the files is refused at start,
/// not left to fail every connect.
#[test]
fn the_coordinator_url_scheme_follows_tls() {
    assert_eq!(coordinator_url("c-0.peers:50051", true).as_deref(), Ok("https://c-0.peers:50051"));
    assert_eq!(coordinator_url("https://c-0.peers:50051", true).as_deref(), Ok("https://c-0.peers:50051"));
    let err = coordinator_url("http://c-0.peers:50051", true).unwrap_err();
    assert!(err.contains("plaintext") && err.contains("--tls-cert"), "{err}");
    let err = coordinator_url("https://c-0.peers:50051", false).unwrap_err();
    assert!(err.contains("no TLS files") && err.contains("--tls-ca"), "{err}");
    let mut s = tonic::Status::new(tonic::Code::Unavailable, "not the leader");
    s.metadata_mut().insert(lockstep_proto::LEADER_METADATA_KEY, "c-2.peers:50051".parse().unwrap());
    assert_eq!(leader_redirect(&s, true).as_deref(), Some("https://c-2.peers:50051"));
}

/// Host ids are what a pod name may be; anything that could escape the
/// default data directory, split a `--hosts` list or never match a pod is
/// refused, naming the problem.
#[test]
fn host_ids_are_pod_names() {
    for ok in ["host-0", "h", "web.eu-1", "A_b.9", &"x".repeat(253)] {
        assert_eq!(host_id_problem(ok), None, "{ok}");
    }
    for (bad, says) in [
        ("", "empty"),
        ("../x", "must start with a letter or digit"),
        (".hidden", "must start with a letter or digit"),
        ("a/b", "contains '/'"),
        ("host 0", "contains ' '"),
        ("a,b", "contains ','"),
        ("hôst", "contains 'ô'"),
        (&"x".repeat(254), "at most 253"),
    ] {
        let problem = host_id_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert!(problem.contains(says), "{bad:?}: {problem}");
    }
}

/// The stream dies between a commit and the next tid's start: the report
/// `Committed` cannot be sent, yet the rest of the core's actions still run
/// (the sink gets the tid, the next tid's accounting opens), so the state
/// offered to the next coordinator is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_mid_action_list_still_leaves_the_kept_state_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), false).await;
    h.join(1).await;
    h.cmd(1, Command::Start { tid: 1, mode: Mode::Live, prepare: false }).await;
    assert!(h.step().await);
    h.cmd(1, Command::Prepare { tid: 1, next: None }).await;
    // The coordinator goes away: nothing can be reported any more.
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    h.out = Reporter::new(tx);
    let commit = Command::Commit { tid: 1, next: Some((2, Mode::Live, false)) };
    let actions = h.agent.core.handle(Event::Command { seq: 5, epoch: 1, command: commit });
    assert!(h.agent.execute(actions, &mut h.out).await.is_err(), "the lost stream is still reported");
    h.sink_synced().await;
    assert_eq!(sink_tids(dir.path()), vec![1], "the commit went through");
    h.reconnect().await;
    let r = h.agent.hello().await.unwrap().resumable.expect("tid 2 is kept");
    assert_eq!((r.last_committed_tid, r.state, r.tid, r.steps), (1, v1::HostTxnState::OpenLive as i32, 2, 0));
}

/// The sink writes in the background: a failed write is not seen by the
/// commit that queued it, but by the host's next action that needs the
/// sink (here a checkpoint, which is then not taken); the host stops with
/// an error of kind `disk_write` and marks itself for exit (the daemon's
/// drive loop then ends the agent). The runtime itself could go on: after
/// a restore the replay writes the tid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sink_write_stops_the_host_before_a_checkpoint_covers_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), false).await;
    h.sink_synced().await;
    let mut faulty = FileSink::open(&dir.path().join("sink")).unwrap();
    faulty.fail_append_at = Some(1);
    h.agent.sink = SinkWriter::start(faulty).unwrap();

    h.join(1).await;
    h.live(1, 1, 3).await;
    h.cmd(1, Command::Prepare { tid: 1, next: None }).await;
    h.cmd(1, Command::Commit { tid: 1, next: None }).await;
    let reports = h.reports();
    assert!(errors(&reports).is_empty(), "{reports:?}");
    assert!(reports.iter().any(|r| matches!(r, R::Committed(v1::Committed { tid: 1 }))), "the commit only queued the write");

    h.cmd(1, Command::Checkpoint { tid: 1 }).await;
    let reports = h.reports();
    let errs = errors(&reports);
    assert_eq!(errs.len(), 1, "{reports:?}");
    assert_eq!((errs[0].kind.as_str(), errs[0].tid), ("disk_write", 1), "{}", errs[0].message);
    assert!(h.agent.disk_failure().is_some_and(|why| why.contains("to the sink failed")), "{:?}", h.agent.disk_failure());
    assert!(!reports.iter().any(|r| matches!(r, R::CheckpointDone(_))), "no checkpoint over a tid the sink lacks");
    assert_eq!(h.agent.core.state(), crate::core::TxnState::Stopped);
    assert!(h.agent.checkpoints.is_empty());
    assert_eq!(sink_tids(dir.path()), Vec::<u64>::new());

    // The coordinator recovers: restore, replay tid 1; the sink writes it.
    h.cmd(2, Command::Restore { checkpoint_tid: 0 }).await;
    h.cmd(2, Command::Start { tid: 1, mode: Mode::Replay, prepare: true }).await;
    while h.step().await {}
    h.cmd(2, Command::Commit { tid: 1, next: None }).await;
    h.cmd(2, Command::Checkpoint { tid: 1 }).await;
    let reports = h.reports();
    assert!(errors(&reports).is_empty(), "{reports:?}");
    assert!(reports.iter().any(|r| matches!(r, R::CheckpointDone(v1::CheckpointDone { tid: 1 }))));
    assert_eq!(sink_tids(dir.path()), vec![1]);
}

/// A sealed replay reports each tid as one entry of a `ReplayedTids` (its
/// steps, in order, and its Prepared), not one report per step; a
/// `Committed` that arrives mid-tid waits aside and goes out after the
/// batch, without splitting the running report, and every report is
/// numbered. Inside a replay window the tids go out in one report (one
/// endpoint table), once the host has nothing left to replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_replay_reports_one_batch_per_tid() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), false).await;
    h.join(1).await;
    h.live(1, 1, 3).await;
    h.cmd(1, Command::Prepare { tid: 1, next: None }).await;
    h.cmd(1, Command::Commit { tid: 1, next: Some((2, Mode::Live, false)) }).await;
    for _ in 0..2 {
        assert!(h.step().await);
    }
    h.cmd(1, Command::Prepare { tid: 2, next: None }).await;
    h.cmd(1, Command::Commit { tid: 2, next: None }).await;
    let live = h.reports();
    assert!(errors(&live).is_empty(), "{live:?}");
    let live_steps = step_dones(&live);
    h.sink_synced().await;
    drop(h);

    let mut h = Harness::open(dir.path(), false).await;
    h.join(2).await;
    assert!(matches!(h.raw_reports()[..], [R::Restored(_)]));
    // Both committed tids started at once (replay window).
    h.cmd(2, Command::Start { tid: 1, mode: Mode::Replay, prepare: true }).await;
    h.cmd(2, Command::Start { tid: 2, mode: Mode::Replay, prepare: true }).await;
    for _ in 0..4 {
        assert!(h.step().await, "three steps of tid 1, then its end (tid 2 opens)");
    }
    assert!(h.step().await, "the first step of tid 2");
    h.cmd(2, Command::Commit { tid: 1, next: None }).await;
    while h.step().await {}
    let messages = h.raw_messages();
    assert_eq!(messages.len(), 1, "both tids' reports in one message: {messages:?}");
    let raw: Vec<R> = messages.into_iter().flatten().collect();
    let entries = |r: &R| match r {
        R::ReplayedTids(run) => run
            .tids
            .iter()
            .map(|b| (b.tid, columns::steps(&b.steps).expect("whole step numbers").collect::<Vec<u64>>(), b.prepared.is_some()))
            .collect::<Vec<_>>(),
        other => panic!("expected ReplayedTids, got {other:?}"),
    };
    assert_eq!(raw.len(), 2, "{raw:?}");
    assert_eq!(
        entries(&raw[0]),
        [(1, vec![1, 2, 3], true), (2, vec![4, 5], true)],
        "tid 1 whole, with its Prepared, then tid 2 whole: the Commit of tid 1 mid-tid does not split the report"
    );
    assert!(matches!(&raw[1], R::CommittedTids(c) if c.tids == [1]), "{raw:?}");

    // Decoded, they are the single reports: every step with its own
    // checksums, equal to what the live run ingested and journaled.
    let decoded: Vec<R> = raw.into_iter().flat_map(expand).collect();
    let replayed = step_dones(&decoded);
    assert_eq!(replayed.iter().map(|s| (s.tid, s.step)).collect::<Vec<_>>(), vec![(1, 1), (1, 2), (1, 3), (2, 4), (2, 5)]);
    for (r, l) in replayed.iter().zip(&live_steps) {
        assert_eq!((&r.checksums, &r.journaled), (&l.checksums, &l.checksums));
    }
    let prepared: Vec<_> = decoded.iter().filter_map(|r| if let R::Prepared(p) = r { Some((p.tid, p.steps)) } else { None }).collect();
    assert_eq!(prepared, vec![(1, 3), (2, 2)]);
}

/// Runs `tids` live tids of `steps` steps each in `dir` and commits them,
/// then reopens the host as a restarted one: restored to the empty state,
/// every tid started at once (a replay window), reports so far drained.
async fn replay_window_after_live(dir: &Path, tids: u64, steps: usize) -> Harness {
    let mut h = Harness::open(dir, false).await;
    h.join(1).await;
    h.cmd(1, Command::Start { tid: 1, mode: Mode::Live, prepare: false }).await;
    for tid in 1..=tids {
        for _ in 0..steps {
            assert!(h.step().await);
        }
        h.cmd(1, Command::Prepare { tid, next: None }).await;
        h.cmd(1, Command::Commit { tid, next: (tid < tids).then_some((tid + 1, Mode::Live, false)) }).await;
    }
    assert!(errors(&h.reports()).is_empty());
    h.sink_synced().await;
    drop(h);

    let mut h = Harness::open(dir, false).await;
    h.join(2).await;
    h.raw_reports();
    for tid in 1..=tids {
        h.cmd(2, Command::Start { tid, mode: Mode::Replay, prepare: true }).await;
    }
    h
}

/// The tids a replaying host commits between two flushes are reported
/// behind the batch as one `CommittedTids` listing each of them in commit
/// order (none merged into a latest value: invariant 8), without
/// splitting the running `ReplayedTids`; once the host has nothing
/// left to replay, a commit is reported at once again, as a `Committed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_during_a_replay_window_are_reported_after_the_batch_each_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = replay_window_after_live(dir.path(), 3, 2).await;
    for _ in 0..7 {
        assert!(h.step().await, "tids 1 and 2 (two steps and the end each), then tid 3's first step");
    }
    h.cmd(2, Command::Commit { tid: 1, next: None }).await;
    h.cmd(2, Command::Commit { tid: 2, next: None }).await;
    assert!(h.raw_messages().is_empty(), "nothing goes out while tid 3 replays");
    while h.step().await {}
    let messages = h.raw_messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let kinds: Vec<String> = messages[0]
        .iter()
        .map(|r| match r {
            R::ReplayedTids(run) => format!("steps of {:?}", run.tids.iter().map(|b| b.tid).collect::<Vec<_>>()),
            R::Committed(c) => format!("committed {}", c.tid),
            R::CommittedTids(c) => format!("committed {:?}", c.tids),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["steps of [1, 2, 3]", "committed [1, 2]"]);
    // Nothing left to replay: the next commit goes out at once (numbered
    // without gaps, which `raw_messages` checks).
    h.cmd(2, Command::Commit { tid: 3, next: None }).await;
    let messages = h.raw_messages();
    assert!(matches!(messages[..], [ref m] if matches!(m[..], [R::Committed(v1::Committed { tid: 3 })])), "{messages:?}");
}

/// A replayed tid whose commit marker is in the journal, like the next
/// one's, is read by a reader that goes on to the next tids: one reader
/// serves the whole run, each tid opened from it before its first step
/// runs, and the replay reports exactly the journaled steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reader_reads_a_run_of_committed_tids_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = replay_window_after_live(dir.path(), 3, 2).await;
    let reader = |h: &Harness| h.agent.reader.as_ref().map(|r| r.tids());
    assert_eq!(h.agent.txn.as_ref().map(|t| t.tid), Some(1), "tid 1 is open");
    assert_eq!(reader(&h), Some((1, 3)), "tid 1 opened a reader of tids 1 to 3, the last journaled");
    for _ in 0..3 {
        assert!(h.step().await, "two steps of tid 1 and its end");
    }
    assert_eq!(h.agent.txn.as_ref().map(|t| t.tid), Some(2));
    assert_eq!(reader(&h), Some((1, 3)), "tid 2 opened from the same reader");
    for _ in 0..3 {
        assert!(h.step().await, "two steps of tid 2 and its end");
    }
    assert_eq!(h.agent.txn.as_ref().map(|t| t.tid), Some(3));
    assert_eq!(reader(&h), Some((1, 3)), "and tid 3");
    while h.step().await {}
    assert_eq!(reader(&h), None, "nothing left to read: the reader is gone");
    let reports = h.reports();
    assert!(errors(&reports).is_empty(), "{reports:?}");
    let steps: Vec<(u64, u64)> = step_dones(&reports).iter().map(|s| (s.tid, s.step)).collect();
    assert_eq!(steps, vec![(1, 1), (1, 2), (2, 3), (2, 4), (3, 5), (3, 6)]);
}

/// A host that goes on replaying does not sit on its reports: once
/// `REPORT_BATCH_TIDS_MAX` tids are prepared, they go out while the host
/// still has started tids to replay, so the coordinator can verify and
/// commit them (and top the window up) meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_window_sends_its_reports_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = replay_window_after_live(dir.path(), REPORT_BATCH_TIDS_MAX as u64 + 2, 1).await;
    let mut sizes = Vec::new();
    while h.step().await {
        let messages = h.raw_messages();
        if !messages.is_empty() {
            let prepared = messages
                .iter()
                .flatten()
                .filter_map(|r| if let R::ReplayedTids(run) = r { Some(run.tids.iter().filter(|b| b.prepared.is_some()).count()) } else { None })
                .sum::<usize>();
            sizes.push((prepared, h.agent.core.next_step().is_some()));
        }
    }
    assert_eq!(
        sizes,
        vec![(REPORT_BATCH_TIDS_MAX, true), (2, false)],
        "a full batch while replaying goes on, then the rest once nothing is left to replay"
    );
}

/// A data directory keeps its id across restarts (`Hello.data_id`, how the
/// coordinator tells a restarted agent from a second one under the same
/// host id); another directory gets another, and neither is 0 ("not
/// given").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_keeps_its_id_across_restarts() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = Harness::open(a.path(), false).await.agent.data_id;
    let again = Harness::open(a.path(), false).await.agent.data_id;
    let other = Harness::open(b.path(), false).await.agent.data_id;
    assert_ne!(first, 0);
    assert_eq!(first, again, "the same directory, the same id");
    assert_ne!(first, other, "another directory, another id");
    let stored = std::fs::read_to_string(a.path().join("data-id")).unwrap();
    assert_eq!(stored.trim().parse::<u64>().unwrap(), first);
    // A damaged file is replaced by a new id, not a reason to stop.
    std::fs::write(a.path().join("data-id"), b"garbage").unwrap();
    let replaced = Harness::open(a.path(), false).await.agent.data_id;
    assert!(replaced != 0 && replaced != first, "{replaced}");
    assert_eq!(Harness::open(a.path(), false).await.agent.data_id, replaced, "and kept");
}

/// The reports a `ReplayedTids` stands for are exactly the single reports
/// queued, in order, when the endpoints change along the way: a step naming
/// an endpoint the table lacks starts another report (its tid continues
/// there), and a Prepared whose aggregate names an endpoint the current
/// table lacks (its tid's earlier steps named it) goes as a plain Prepared.
#[tokio::test]
async fn replayed_reports_follow_endpoint_changes_across_reports() {
    let (tx, mut rx) = mpsc::channel(4);
    let mut out = Reporter::new(tx);
    let sums = |pairs: &[(&str, u64)]| -> EndpointChecksums {
        pairs.iter().map(|(e, n)| (e.to_string(), lockstep_journal::Checksum { count: *n, hash: n * 10 })).collect()
    };
    let prepared = |tid: u64, steps: u64, pairs: &[(&str, u64)]| v1::Prepared {
        tid,
        steps,
        aggregate: convert::checksums_to_proto(&sums(pairs)),
        output_digest: tid,
        output_count: 1,
    };
    // Tid 1 on `gen` only; tid 2 adds `push` mid-tid (a new report, table
    // `gen`, `push`); tid 3 on `push` alone fits that table (`gen` absent);
    // tid 4 names `push`, then `other` (a new report, table `other`), so
    // its aggregate (`other`, `push`) fits no queued table.
    let (g, gp, p, o) = (sums(&[("gen", 1)]), sums(&[("gen", 2), ("push", 3)]), sums(&[("push", 4)]), sums(&[("other", 5)]));
    out.queue_replayed_step(1, 1, &g, &g);
    out.queue_replayed_step(1, 2, &g, &g);
    out.queue_prepared(prepared(1, 2, &[("gen", 2)]));
    out.queue_replayed_step(2, 3, &g, &g);
    out.queue_replayed_step(2, 4, &gp, &gp);
    out.queue_prepared(prepared(2, 2, &[("gen", 3), ("push", 3)]));
    out.queue_replayed_step(3, 5, &p, &p);
    out.queue_prepared(prepared(3, 1, &[("push", 4)]));
    out.queue_replayed_step(4, 6, &p, &p);
    out.queue_replayed_step(4, 7, &o, &o);
    out.queue_prepared(prepared(4, 2, &[("other", 5), ("push", 4)]));
    assert!(out.flush().await.is_ok(), "the channel is open");
    let sent = rx.recv().await.unwrap();
    assert!(sent.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1), "numbered 1, 2, 3, ...");
    let shapes: Vec<String> = sent
        .iter()
        .map(|r| match r.report.as_ref().unwrap() {
            R::ReplayedTids(run) => format!(
                "{:?}: {}",
                run.endpoints,
                run.tids.iter().map(|t| format!("{}{}", t.tid, if t.prepared.is_some() { "+p" } else { "" })).collect::<Vec<_>>().join(" ")
            ),
            R::Prepared(p) => format!("Prepared {}", p.tid),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        shapes,
        [r#"["gen"]: 1+p 2"#, r#"["gen", "push"]: 2+p 3+p 4"#, r#"["other"]: 4"#, "Prepared 4"],
        "{sent:?}"
    );
    // Expanded, they are the single reports in the order queued.
    let singles: Vec<String> = sent
        .into_iter()
        .flat_map(|r| expand(r.report.unwrap()))
        .map(|r| match r {
            R::StepDone(s) => format!("step {}/{} {:?}", s.tid, s.step, s.checksums.iter().map(|c| (c.endpoint.clone(), c.count)).collect::<Vec<_>>()),
            R::Prepared(p) => format!("prepared {} {:?}", p.tid, p.aggregate.iter().map(|c| (c.endpoint.clone(), c.count)).collect::<Vec<_>>()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        singles,
        [
            r#"step 1/1 [("gen", 1)]"#,
            r#"step 1/2 [("gen", 1)]"#,
            r#"prepared 1 [("gen", 2)]"#,
            r#"step 2/3 [("gen", 1)]"#,
            r#"step 2/4 [("gen", 2), ("push", 3)]"#,
            r#"prepared 2 [("gen", 3), ("push", 3)]"#,
            r#"step 3/5 [("push", 4)]"#,
            r#"prepared 3 [("push", 4)]"#,
            r#"step 4/6 [("push", 4)]"#,
            r#"step 4/7 [("other", 5)]"#,
            r#"prepared 4 [("other", 5), ("push", 4)]"#,
        ]
    );
}

/// A checkpoint file that cannot be written (here its directory is a file;
/// a full disk alike) is a disk write failure: reported as `disk_write`,
/// no checkpoint offered, and the agent marks itself for exit, like a
/// failed journal or sink write. The engine and the journal are intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_written_is_a_disk_write_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path(), false).await;
    h.join(1).await;
    h.live(1, 1, 3).await;
    h.cmd(1, Command::Prepare { tid: 1, next: None }).await;
    h.cmd(1, Command::Commit { tid: 1, next: None }).await;
    h.reports();
    let checkpoints = dir.path().join("checkpoints");
    std::fs::remove_dir_all(&checkpoints).unwrap();
    std::fs::write(&checkpoints, b"not a directory").unwrap();
    h.cmd(1, Command::Checkpoint { tid: 1 }).await;
    let reports = h.reports();
    let errs = errors(&reports);
    assert_eq!(errs.len(), 1, "{reports:?}");
    assert_eq!((errs[0].kind.as_str(), errs[0].tid), ("disk_write", 1), "{}", errs[0].message);
    assert!(errs[0].message.contains("writing checkpoint 1 failed"), "{}", errs[0].message);
    assert!(!reports.iter().any(|r| matches!(r, R::CheckpointDone(_))));
    assert!(h.agent.checkpoints.is_empty());
    assert!(h.agent.disk_failure().is_some_and(|why| why.contains("writing checkpoint 1 failed")), "{:?}", h.agent.disk_failure());
    assert!(h.agent.journal.poisoned().is_none(), "the journal is intact");
}

/// A host cut off from the leader alone is sent there by each follower in
/// turn: the round's warning names the leader once, says who named it, and
/// keeps each distinct reason; an address tried on its own stays plain.
#[test]
fn the_round_warning_names_each_address_once_with_who_named_it() {
    let f = |addr: &str, named_by: Option<&str>, why: &str| RoundFailure {
        addr: addr.into(),
        named_by: named_by.map(String::from),
        why: why.into(),
    };
    let (addrs, why) = round_summary(&[
        f("http://c1:50051", Some("http://c2:50051"), "no answer within 2000 ms"),
        f("http://c1:50051", Some("http://c3:50051"), "no answer within 2000 ms"),
        f("http://c3:50051", None, "connection refused"),
        f("http://c1:50051", Some("http://c2:50051"), "connection refused"),
    ]);
    assert_eq!(addrs, ["http://c1:50051", "http://c3:50051"]);
    assert_eq!(
        why,
        "http://c1:50051 (the leader, as http://c2:50051 and http://c3:50051 answered): no answer within 2000 ms; then \
         connection refused; http://c3:50051: connection refused"
    );
}

/// The hint to give a plaintext host TLS files is for a session that never
/// started; a stream that broke once it was up says the same transport words
/// (a partition, a coordinator gone) and gets no such hint.
#[test]
fn the_tls_hint_is_only_for_a_session_that_never_started() {
    let broken = tonic::Status::unknown("h2 protocol error: error reading a body from connection: stream closed because of a broken pipe");
    let hint = "if the coordinator serves mutual TLS";
    match status_end(&broken, "Session refused", false, false) {
        SessionEnd::ConnectFailed(why) => assert!(why.contains(hint), "{why}"),
        other => panic!("expected ConnectFailed, got {other:?}"),
    }
    match status_end(&broken, "stream ended", true, false) {
        SessionEnd::Lost(why) => assert!(!why.contains(hint), "{why}"),
        other => panic!("expected Lost, got {other:?}"),
    }
}
