//! The coordinator core: the pipeline and transaction state machine as a
//! pure function `state + event -> (state, actions)`.
//!
//! Deterministic and sans-IO, in the manner of quinn-proto: no sockets, no
//! tokio, no clock. Time comes in as `now_us` (microseconds, so that a
//! commit interval of a millisecond or two is not rounded by a whole
//! millisecond either way) with every event; the shell
//! (`service.rs`) turns gRPC streams and raft commits into `Event`s and runs
//! the returned `Action`s in one place. Every (phase, event) pair has an
//! explicit outcome in `handle`: an event that has no business in a phase is
//! a protocol error that fails the pipeline loudly, never silence (DESIGN
//! invariant 7). The transition table as built is in docs/ARCHITECTURE.md,
//! section "Coordinator state machine", and `table_tests.rs` pins every
//! (phase, event) pair of it row by row.
//!
//! **Commit pipeline** (`pipeline_depth` > 1, live tids only). With one tid
//! at a time, every tid costs a ledger round (raft append, replication,
//! fsyncs) during which the hosts wait. With a pipeline, tids are begun in
//! the ledger ahead of use (`ahead`, up to the depth); when the open live
//! tid T is due, the hosts get `Prepare{T, next: Start{N}}` with N begun
//! ahead: each finishes its step, reports `Prepared{T}`, holds T's outputs
//! and runs N at once. T waits in `inflight` until every host prepared it,
//! then its commit is proposed while N runs; commits are proposed and
//! applied in tid order, and `Commit{T}` (no next) goes out when the ledger
//! holds it. Each host's reports still come in its own tid order, so a
//! host's reports are about the oldest inflight tid it has not prepared,
//! else the open tid. Checkpoints still need no tid open: tids are begun
//! ahead only up to the next scheduled checkpoint, and the tid before a
//! checkpoint prepares without a next. After a crash the ledger may hold
//! several begun, uncommitted tids (`finish_replay`): those before the last
//! one any host journaled steps for are replayed at their journaled
//! boundary and committed (`recovering`); that last one continues live
//! (invariant 4); tids after it, begun but never started, are used next.

mod resume;
mod types;
mod verify;

use std::collections::{BTreeMap, VecDeque};

use lockstep_journal::{Aggregate, Checksum};

pub use types::*;

use crate::ledger::{HostTxnRecord, LedgerState, TxnStatus};

/// Commit policy and limits, all in the units their names end with.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub cluster_id: String,
    /// Hosts of a new cluster (written to the ledger by `Init`).
    pub hosts: Vec<HostId>,
    /// Prepare a live transaction once it has been open this long.
    pub commit_interval_ms: u64,
    /// ... or once any host has run this many steps in it.
    pub txn_steps_max: u64,
    /// ... or once the hosts ingested this many records in it.
    pub txn_records_max: u64,
    /// Take a checkpoint after every this many commits (0 = only on request).
    pub checkpoint_every_txns: u64,
    /// A host that sends nothing (reports or heartbeats) for this long is
    /// treated as lost while the pipeline is active.
    pub report_deadline_ms: u64,
    /// Replay of committed tids: how many tids each host may have started
    /// and not yet had verified (1 = a host waits for `Commit{T}` before it
    /// gets `Start` of the next tid). See `Phase::Replaying`.
    pub replay_window: u64,
    /// Live commit pipeline: how many live tids may be begun and not yet
    /// committed at once, the open one included (1 = one tid at a time:
    /// the next tid starts only with the previous one's `Commit`). See
    /// "Commit pipeline" in the module docs.
    pub pipeline_depth: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            cluster_id: "lockstep-dev".into(),
            hosts: vec!["host-0".into(), "host-1".into()],
            commit_interval_ms: 200,
            txn_steps_max: 1000,
            txn_records_max: 1_000_000,
            checkpoint_every_txns: 20,
            report_deadline_ms: 5000,
            replay_window: 128,
            pipeline_depth: 1,
        }
    }
}

/// Where the transaction of a running pipeline is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Txn {
    /// `Begin(tid)` proposed to the ledger, not yet durable.
    Beginning { tid: Tid },
    /// Hosts run steps in `tid`. `mode` is `Replay` for the open last
    /// transaction while its journaled steps are re-run (invariant 4).
    Open { tid: Tid, mode: Mode, opened_us: u64 },
    /// `Prepare(tid)` sent; waiting for every host's `Prepared`. Steps
    /// already under way may still report.
    Preparing { tid: Tid, mode: Mode },
    /// `Commit(tid)` proposed to the ledger, not yet durable.
    Committing { tid: Tid, checkpoint_after: bool },
    /// `Checkpoint(tid)` sent with no transaction open; waiting for every
    /// host's `CheckpointDone`.
    Checkpointing { tid: Tid },
    /// `CheckpointComplete(tid)` proposed to the ledger.
    RecordingCheckpoint { tid: Tid },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for every member host to say Hello.
    Joining,
    /// Everyone is here; `NewEpoch(epoch)` proposed.
    Bumping { epoch: Epoch },
    /// `Restore(checkpoint)` sent; waiting for every host's `Restored`.
    Restoring { checkpoint: Tid },
    /// Re-running the committed tids after the restored checkpoint. Each
    /// host has its own position in the queue (`at`) and moves on as soon as
    /// its own report of a tid verifies: the tid is committed in the ledger
    /// with a record per host, so no host's commit depends on another's
    /// replay. Only the last committed tid waits for every host, because
    /// what follows (the open last tid, or a fresh `Begin`) is a
    /// transaction of all hosts together.
    ///
    /// Replay window: a host gets the `Start` of up to `replay_window`
    /// committed tids ahead of their `Commit`s (`sent`), so it runs the next
    /// tid while this coordinator verifies the last one instead of waiting a
    /// round trip per tid. Its reports still come in tid order (all of T,
    /// then all of T+1), so `at` is still the tid its next report is about,
    /// and each report is verified exactly as without a window. The host
    /// holds every prepared tid's outputs until that tid's own `Commit`.
    Replaying {
        /// The oldest tid not every host has passed yet: the slowest
        /// host's. Always `queue[0].tid`.
        tid: Tid,
        /// Every committed tid from `tid` on, in ledger order, with what the
        /// hosts that already passed it reported.
        queue: VecDeque<ReplayTid>,
        /// Each member host's tid in `queue`: the one it is replaying, or
        /// (the last one only) prepared in and waiting for the others.
        at: BTreeMap<HostId, Tid>,
        /// Each member host's furthest tid whose `Start` was sent (`>= at`).
        sent: BTreeMap<HostId, Tid>,
    },
    Running(Txn),
    Failed(Diagnosis),
    Stopped { reason: String },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Joining | Phase::Bumping { .. } => "Joining",
            Phase::Restoring { .. } => "Restoring",
            Phase::Replaying { .. } => "Replaying",
            Phase::Running(_) => "Running",
            Phase::Failed(_) => "Failed",
            Phase::Stopped { .. } => "Stopped",
        }
    }

    fn is_active(&self) -> bool {
        !matches!(self, Phase::Joining | Phase::Failed(_) | Phase::Stopped { .. })
    }
}

/// The index of `tid` in the replay queue (see [`index_of_tid`]).
fn replay_index(queue: &VecDeque<ReplayTid>, tid: Tid) -> Option<usize> {
    index_of_tid(tid, queue.front().map(|q| q.tid), |i| queue.get(i).map(|q| q.tid), || queue.binary_search_by_key(&tid, |q| q.tid))
}

/// Sets `host`'s tid in a replay position map. Every host is in both maps
/// (`at`, `sent`) from `start_replay` on, so this updates in place and
/// allocates no host id per tid; the insert only keeps it total.
fn set_host_tid(map: &mut BTreeMap<HostId, Tid>, host: &str, tid: Tid) {
    match map.get_mut(host) {
        Some(t) => *t = tid,
        None => {
            map.insert(host.to_owned(), tid);
        }
    }
}

/// A committed tid in the replay queue, and the hosts that passed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayTid {
    pub tid: Tid,
    /// Hosts whose replay of `tid` verified (and, but for the last tid,
    /// were sent its `Commit`).
    pub passed: usize,
    /// Input records those hosts replayed in `tid`, for the `Committed`
    /// notice that goes out once every host passed it.
    pub records: u64,
}

/// Per-host progress in the current transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostProgress {
    pub steps: u64,
    /// Steps run live (after replay of the open transaction, or plain live).
    pub live_steps: u64,
    /// Last step reported in this transaction (0 = none).
    pub last_step: u64,
    pub records: u64,
    pub sum: Aggregate,
    pub prepared: Option<PreparedReport>,
}

/// What the coordinator knows about one member host.
#[derive(Clone, Debug, Default)]
pub struct HostSlot {
    pub conn: Option<ConnId>,
    pub hello: Option<Hello>,
    pub last_heard_us: u64,
    pub last_step: u64,
    pub last_committed: Tid,
    /// Highest tid this host's current stream was sent `Commit` for: a
    /// `Committed` report must lie in `(last_committed, commit_sent]`.
    commit_sent: Tid,
    pub txn: HostProgress,
    /// Acknowledgement of the current phase's broadcast (Restored or
    /// CheckpointDone).
    pub acked: bool,
    /// Why this host was last lost (`lose_host`), for operators
    /// (`HostStatus.last_lost`): kept once it is back.
    pub last_lost: Option<String>,
    /// The data id this host had before its current Hello, when that one
    /// names another data directory (a new or restored volume): said in a
    /// diagnosis of its journal.
    pub data_id_was: Option<u64>,
}

/// A live tid prepared with the next tid opened (commit pipeline), whose
/// commit the ledger does not hold yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inflight {
    pub tid: Tid,
    /// The hosts that reported `Prepared{tid}`, and what they reported.
    pub prepared: BTreeMap<HostId, PreparedReport>,
    /// Input records the hosts reported in `tid`.
    pub records: u64,
    /// Its `Commit` entry went to the ledger.
    pub proposed: bool,
}

pub struct Core {
    cfg: CoreConfig,
    ledger: LedgerState,
    phase: Phase,
    hosts: BTreeMap<HostId, HostSlot>,
    /// Commit pipeline: live tids prepared with the next one opened, not
    /// yet committed, oldest first.
    inflight: VecDeque<Inflight>,
    /// Tids begun in the ledger ahead of the open one, never started.
    ahead: VecDeque<Tid>,
    /// `Begin` entries proposed for `ahead`, not yet applied.
    beginning: VecDeque<Tid>,
    /// Recovery: begun, uncommitted tids replayed at their journaled
    /// boundary and then committed, one after the other (`finish_replay`).
    recovering: VecDeque<Tid>,
    /// Recovery: the begun tid that continues live after `recovering`
    /// (invariant 4).
    open_last: Option<Tid>,
    /// Live tids prepared since the last complete checkpoint.
    prepared_since_checkpoint: u64,
    checkpoint_requested: bool,
    now_us: u64,
    /// The path the last new epoch took, and why (for the Admin API).
    last_recovery: Option<Recovery>,
}

impl Core {
    /// A core over the ledger as recovered from disk. Proposes `Init` if the
    /// ledger is new.
    pub fn new(cfg: CoreConfig, ledger: LedgerState) -> Result<(Core, Vec<Action>), String> {
        let mut actions = Vec::new();
        if ledger.is_initialised() {
            if ledger.cluster_id != cfg.cluster_id {
                return Err(format!(
                    "the ledger in this data directory belongs to cluster {:?}, but this coordinator was started for \
                     cluster {:?}; start it with --cluster-id {:?} or point --data-dir at this cluster's ledger",
                    ledger.cluster_id, cfg.cluster_id, ledger.cluster_id
                ));
            }
        } else {
            if cfg.hosts.is_empty() {
                return Err("a new cluster needs at least one host (--hosts)".into());
            }
            actions.push(Action::Propose(LedgerEntry::Init {
                cluster_id: cfg.cluster_id.clone(),
                hosts: cfg.hosts.clone(),
            }));
        }
        let members = if ledger.is_initialised() { ledger.hosts.clone() } else { cfg.hosts.clone() };
        let hosts = members.into_iter().map(|h| (h, HostSlot::default())).collect();
        Ok((
            Core {
                cfg,
                ledger,
                phase: Phase::Joining,
                hosts,
                inflight: VecDeque::new(),
                ahead: VecDeque::new(),
                beginning: VecDeque::new(),
                recovering: VecDeque::new(),
                open_last: None,
                prepared_since_checkpoint: 0,
                checkpoint_requested: false,
                now_us: 0,
                last_recovery: None,
            },
            actions,
        ))
    }

    // ------------------------------------------------------------ getters

    pub fn phase(&self) -> &Phase {
        &self.phase
    }
    pub fn ledger(&self) -> &LedgerState {
        &self.ledger
    }
    pub fn hosts(&self) -> &BTreeMap<HostId, HostSlot> {
        &self.hosts
    }
    pub fn epoch(&self) -> Epoch {
        self.ledger.epoch
    }
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }
    /// Commit pipeline: prepared live tids whose commit is not recorded yet.
    pub fn inflight(&self) -> &VecDeque<Inflight> {
        &self.inflight
    }
    /// Commit pipeline: tids begun ahead of the open one.
    pub fn ahead(&self) -> &VecDeque<Tid> {
        &self.ahead
    }
    /// How the last new epoch of this core picked up the pipeline.
    pub fn last_recovery(&self) -> Option<&Recovery> {
        self.last_recovery.as_ref()
    }

    /// Takes the replicated ledger's records in place of this core's equal
    /// ones (after both applied the same entry), so the two copies of the
    /// ledger hold one record per tid. Changes nothing the core decides on.
    pub fn share_records(&mut self, records: Vec<std::sync::Arc<crate::ledger::TxnRecord>>) {
        for r in records {
            self.ledger.adopt(r);
        }
    }

    /// The one place that decides what an event means in the current phase.
    pub fn handle(&mut self, now_us: u64, event: Event) -> Vec<Action> {
        self.now_us = self.now_us.max(now_us);
        let mut out = Vec::new();
        if let Some(host) = event_host(&event) {
            if let Some(slot) = self.hosts.get_mut(host) {
                slot.last_heard_us = self.now_us;
            }
        }
        match event {
            Event::Hello { conn, hello } => self.on_hello(conn, hello, &mut out),
            Event::Disconnected { conn, host, reason } => self.on_disconnected(conn, &host, reason, &mut out),
            Event::Heartbeat { .. } => {}
            Event::Step { host, report } => self.on_step(&host, report, &mut out),
            Event::Replayed { host, batch } => self.on_replayed(&host, batch, &mut out),
            Event::Prepared { host, report } => self.on_prepared(&host, report, &mut out),
            Event::Committed { host, tid } => self.on_committed(&host, tid, &mut out),
            Event::CheckpointDone { host, tid } => self.on_checkpoint_done(&host, tid, &mut out),
            Event::Restored { host, checkpoint } => self.on_restored(&host, checkpoint, &mut out),
            Event::HostError { host, kind, message, tid } => self.on_host_error(&host, kind, message, tid, &mut out),
            Event::Applied { entry, result } => self.on_applied(entry, result, &mut out),
            Event::ProposeFailed { entry, error } => {
                let d = Diagnosis {
                    summary: format!("the ledger could not record {}: {error}", entry_name(&entry)),
                    hint: "check the coordinator's data directory (disk full? permissions?) and its log, then Resume".into(),
                    ..Default::default()
                };
                self.fail(d, &mut out);
            }
            Event::Tick => self.on_tick(&mut out),
            Event::AdminCheckpoint => self.checkpoint_requested = true,
            Event::AdminStop { reason } => self.on_admin_stop(reason, &mut out),
            Event::AdminResume => self.on_admin_resume(&mut out),
        }
        out
    }

    // ------------------------------------------------------------ handlers
    //
    // Host reports (steps, Prepared, Committed, CheckpointDone, Restored)
    // are protocol errors in `Joining` and `Bumping`: recovery closes every
    // stream (`rejoin_all`), the shell drops whatever a closed stream still
    // sends, and no command but Welcome goes to a fresh stream before
    // `Restoring`. Only in `Failed` and `Stopped` may reports of an abandoned
    // transaction still arrive (the streams stay open and the hosts were told
    // to Stop); those decide nothing.

    fn on_hello(&mut self, conn: ConnId, hello: Hello, out: &mut Vec<Action>) {
        if let Err(error) = self.validate_hello(&hello) {
            out.push(Action::Reject { conn, error });
            return;
        }
        let host = hello.host_id.clone();
        if let Some(error) = self.second_agent(&hello) {
            out.push(Action::Reject { conn, error });
            return;
        }
        let slot = self.hosts.get_mut(&host).expect("validated membership");
        // The data directory the host's previous Hello named, if both name one.
        let previous = slot.hello.as_ref().map(|h| h.data_id).filter(|&was| was != 0 && hello.data_id != 0);
        let same_data = previous == Some(hello.data_id);
        if slot.hello.is_some() {
            slot.data_id_was = previous.filter(|_| !same_data);
        }
        if let Some(old) = slot.conn.replace(conn) {
            // A host agent that restarted before its old stream was seen to
            // end (`second_agent` refused a live one with other data).
            let why = if same_data {
                "replaced by a newer stream from the same host agent's data directory (it restarted)".to_string()
            } else {
                format!(
                    "replaced by a newer stream of the same host; if this repeats, two host agents run with --host-id \
                     {host} (compare the peers of their 'host stream opened' lines)"
                )
            };
            out.push(Action::Drop { conn: old, host: host.clone(), why });
        }
        slot.hello = Some(hello);
        slot.commit_sent = slot.last_committed;
        slot.last_heard_us = self.now_us;
        slot.last_step = slot.hello.as_ref().map(|h| h.last_step).unwrap_or(0);
        out.push(Action::Accept { conn, host: host.clone() });
        out.push(Action::Notice(Notice::HostJoined { host: host.clone() }));
        match &self.phase {
            // A host (re)joining an active pipeline means its previous stream
            // died: everything it was doing is gone, recover all hosts.
            p if p.is_active() => self.lose_host(&host, "it reconnected with a new stream".into(), out),
            Phase::Joining => self.try_start_recovery(out),
            Phase::Failed(_) | Phase::Stopped { .. } => {}
            _ => unreachable!("is_active covers every other phase"),
        }
    }

    /// Why `hello` comes from a second host agent under the id of one that
    /// is connected, if it does: it names another data directory than the
    /// connected stream's (`Hello.data_id`, both given), and that stream was
    /// heard from within the report deadline. Two such agents used to
    /// replace each other's stream in turn, each turn a recovery in a new
    /// epoch; now the newcomer is refused (and retries) until the connected
    /// one goes away. A restarted agent (same data directory) replaces its
    /// old stream as before, and so does anyone once the connected stream
    /// has been silent past the deadline (a half-open connection).
    fn second_agent(&self, hello: &Hello) -> Option<String> {
        let slot = self.hosts.get(&hello.host_id)?;
        let connected = slot.hello.as_ref().filter(|_| slot.conn.is_some())?;
        if hello.data_id == 0 || connected.data_id == 0 || hello.data_id == connected.data_id || self.past_deadline(slot) {
            return None;
        }
        Some(format!(
            "host {host} is already connected, from an agent with another data directory (data id {theirs:016x}, ingest API \
             at {addr}; this agent's data id is {ours:016x}): two host agents run with --host-id {host}. Stop one of them. \
             If the connected one is gone, this one is accepted once its stream is seen to end (within the report \
             deadline, {deadline} ms)",
            host = hello.host_id,
            theirs = connected.data_id,
            addr = connected.ingest_addr,
            ours = hello.data_id,
            deadline = self.cfg.report_deadline_ms,
        ))
    }

    /// Whether `slot`'s host has sent nothing for longer than the report
    /// deadline.
    fn past_deadline(&self, slot: &HostSlot) -> bool {
        self.now_us.saturating_sub(slot.last_heard_us) > self.cfg.report_deadline_ms.saturating_mul(1000)
    }

    /// Closes `host`'s stream, if it has one, saying `why`, and loses the
    /// host (`lose_host`).
    fn drop_host(&mut self, host: &str, why: String, out: &mut Vec<Action>) {
        if let Some(conn) = self.hosts.get_mut(host).and_then(|s| s.conn.take()) {
            out.push(Action::Drop { conn, host: host.to_owned(), why: why.clone() });
        }
        self.lose_host(host, why, out);
    }

    fn on_disconnected(&mut self, conn: ConnId, host: &str, reason: String, out: &mut Vec<Action>) {
        let Some(slot) = self.hosts.get_mut(host) else { return };
        if slot.conn != Some(conn) {
            return; // an older stream that was already replaced
        }
        slot.conn = None;
        self.lose_host(host, reason, out);
    }

    /// Fail closed: a lost host never lets the open transaction commit. The
    /// pipeline goes back to Joining and recovers once every host is back.
    fn lose_host(&mut self, host: &str, why: String, out: &mut Vec<Action>) {
        if let Some(slot) = self.hosts.get_mut(host) {
            slot.last_lost = Some(why.clone());
        }
        out.push(Action::Notice(Notice::HostLost { host: host.to_owned(), why: why.clone() }));
        match &self.phase {
            Phase::Failed(_) | Phase::Stopped { .. } | Phase::Joining => {}
            Phase::Bumping { .. } | Phase::Restoring { .. } | Phase::Replaying { .. } | Phase::Running(_) => {
                self.reset_pipeline();
                self.set_phase(Phase::Joining, format!("host {host} lost: {why}"), out);
                self.rejoin_all(format!("host {host} lost; recovering"), out);
            }
        }
    }

    fn on_step(&mut self, host: &str, r: StepReport, out: &mut Vec<Action>) {
        let Some(slot) = self.hosts.get(host) else { return self.unknown_host(host, out) };
        let behind = self.behind_in(host);
        // (tid, replay steps allowed, live steps allowed) in this phase.
        let expected = match &self.phase {
            // Every member host has a position (`start_replay`).
            Phase::Replaying { at, .. } => at.get(host).map(|t| (*t, true, false)),
            // Commit pipeline: a host's steps belong to the oldest tid it
            // has not prepared yet.
            Phase::Running(Txn::Open { .. } | Txn::Preparing { .. }) if behind.is_some() => behind.map(|t| (t, false, true)),
            Phase::Running(Txn::Open { tid, mode, .. }) | Phase::Running(Txn::Preparing { tid, mode }) => {
                Some((*tid, *mode == Mode::Replay, true))
            }
            Phase::Failed(_) | Phase::Stopped { .. } => {
                // In-flight steps of a transaction already abandoned: the
                // host was told to Stop; its report decides nothing.
                return;
            }
            // Joining/Bumping: no command was sent (see "handlers" above).
            Phase::Joining
            | Phase::Bumping { .. }
            | Phase::Restoring { .. }
            | Phase::Running(Txn::Beginning { .. })
            | Phase::Running(Txn::Committing { .. })
            | Phase::Running(Txn::Checkpointing { .. })
            | Phase::Running(Txn::RecordingCheckpoint { .. }) => None,
        };
        let Some((tid, replay_ok, live_ok)) = expected else {
            return self.protocol_error(host, Some(r.tid), Some(r.step),
                format!("step reported while the coordinator has no open transaction ({})", self.describe()), out);
        };
        if r.tid != tid {
            return self.protocol_error(host, Some(r.tid), Some(r.step),
                format!("step reported for tid {} while tid {tid} is open", r.tid), out);
        }
        // A host starts no step once it reported Prepared (DESIGN §5): the
        // prepared report is what the commit holds it to.
        if slot.txn.prepared.is_some() {
            return self.protocol_error(host, Some(r.tid), Some(r.step),
                format!("step reported after this host's Prepared for tid {tid}"), out);
        }
        let state_ok = match (r.mode, r.state) {
            (Mode::Replay, HostTxnState::OpenReplay) => replay_ok && slot.txn.live_steps == 0,
            (Mode::Live, HostTxnState::OpenLive) => live_ok,
            _ => false,
        };
        if !state_ok {
            return self.protocol_error(host, Some(r.tid), Some(r.step),
                format!("host reports state {:?} in mode {:?}, coordinator expects {}", r.state, r.mode, self.describe()), out);
        }
        // Steps are numbered per host and strictly increase (invariant 8);
        // replayed steps keep their journaled numbers, new live steps follow
        // the host's last journaled step.
        let floor = if r.mode == Mode::Live { slot.last_step.max(slot.txn.last_step) } else { slot.txn.last_step };
        if r.step <= floor {
            return self.protocol_error(host, Some(r.tid), Some(r.step),
                format!("step numbers must strictly increase; previous step was {floor}"), out);
        }
        if r.mode == Mode::Replay {
            if let Some(d) = verify::replayed_step(host, &r) {
                return self.fail(d, out);
            }
        }
        let slot = self.hosts.get_mut(host).expect("checked above");
        slot.last_step = slot.last_step.max(r.step);
        let p = &mut slot.txn;
        p.last_step = r.step;
        p.steps += 1;
        if r.mode == Mode::Live {
            p.live_steps += 1;
        }
        p.records = p.records.wrapping_add(r.checksums.records());
        p.sum.merge(&r.checksums);
        self.prepare_if_due(out);
    }

    /// A batch of replayed steps of one tid, then maybe its Prepared: by
    /// definition exactly what each step's own `Step` event and then the
    /// `Prepared` would do (table_tests pins this for every phase). The
    /// usual case, a sealed replay whose steps all ingested what the
    /// journal recorded, is checked here in columns (`replayed_in_order`);
    /// anything else, or any other phase, goes through `on_step` one step
    /// at a time, which decides and diagnoses as for single reports.
    fn on_replayed(&mut self, host: &str, b: ReplayedBatch, out: &mut Vec<Action>) {
        if !self.replayed_in_order(host, &b) {
            for i in 0..b.steps.len() {
                self.on_step(host, b.step_report(i), out);
            }
        }
        if let Some(p) = b.prepared {
            self.on_prepared(host, p, out);
        }
    }

    /// Takes `b`'s steps if every one of them passes what `on_step` checks
    /// and each ingested exactly what the journal recorded (equal rows),
    /// in the sealed replay; returns `false`, having changed nothing,
    /// otherwise. Sums per endpoint column first, so the host's aggregate
    /// is updated once per batch instead of once per step.
    fn replayed_in_order(&mut self, host: &str, b: &ReplayedBatch) -> bool {
        let Phase::Replaying { at, .. } = &self.phase else { return false };
        let (Some(&tid), Some(slot)) = (at.get(host), self.hosts.get_mut(host)) else { return false };
        let p = &mut slot.txn;
        if b.tid != tid || p.prepared.is_some() || p.live_steps != 0 {
            return false;
        }
        let mut floor = p.last_step;
        for (i, &step) in b.steps.iter().enumerate() {
            if step <= floor {
                return false;
            }
            // Without a journaled side, the host sent the replayed one as
            // both.
            if b.journaled.is_some() {
                let (replayed, journaled) = b.row(i);
                if replayed != journaled {
                    return false;
                }
            }
            floor = step;
        }
        let Some(&last) = b.steps.last() else { return true };
        let n = b.endpoints.len();
        let mut columns: Vec<Option<Checksum>> = vec![None; n];
        for row in b.replayed.chunks_exact(n.max(1)) {
            for (sum, c) in columns.iter_mut().zip(row) {
                if let Some(c) = c {
                    sum.get_or_insert(Checksum::EMPTY).merge(*c);
                }
            }
        }
        for (endpoint, c) in b.endpoints.iter().zip(&columns) {
            if let Some(c) = c {
                p.records = p.records.wrapping_add(c.count);
                p.sum.add(endpoint, *c);
            }
        }
        p.steps += b.steps.len() as u64;
        p.last_step = last;
        slot.last_step = slot.last_step.max(last);
        true
    }

    fn on_prepared(&mut self, host: &str, r: PreparedReport, out: &mut Vec<Action>) {
        if !self.hosts.contains_key(host) {
            return self.unknown_host(host, out);
        }
        let behind = self.behind_in(host);
        let tid = match &self.phase {
            Phase::Replaying { at, .. } if at.contains_key(host) => at[host],
            Phase::Running(Txn::Open { .. } | Txn::Preparing { .. }) if behind.is_some() => behind.unwrap_or_default(),
            Phase::Running(Txn::Preparing { tid, .. }) => *tid,
            Phase::Failed(_) | Phase::Stopped { .. } => return,
            Phase::Joining | Phase::Bumping { .. } | Phase::Restoring { .. } | Phase::Replaying { .. } | Phase::Running(_) => {
                return self.protocol_error(host, Some(r.tid), None,
                    format!("Prepared arrived but no Prepare is outstanding ({})", self.describe()), out);
            }
        };
        if r.tid != tid {
            let whose = if matches!(self.phase, Phase::Replaying { .. }) { "this host replays" } else { "preparing" };
            return self.protocol_error(host, Some(r.tid), None, format!("Prepared for tid {} while {whose} tid {tid}", r.tid), out);
        }
        let slot = &self.hosts[host];
        if slot.txn.prepared.is_some() {
            return self.protocol_error(host, Some(tid), None, "Prepared twice for the same tid".into(), out);
        }
        // The prepare must account for exactly the steps this host reported.
        if let Some(d) = verify::prepared_matches_steps(host, &slot.txn, &r) {
            return self.fail(d, out);
        }
        if matches!(self.phase, Phase::Replaying { .. }) {
            let journal = slot.hello.as_ref().and_then(|h| h.journaled(tid));
            let ledger = self.ledger.txn(tid).and_then(|t| t.hosts.get(host));
            if let Some(d) = verify::replayed_txn(host, &r, journal, ledger) {
                return self.fail(d, out);
            }
            return self.replay_passed(host, r, out);
        }
        if behind == Some(tid) {
            // Commit pipeline: the host has moved on to the next tid.
            let slot = self.hosts.get_mut(host).expect("checked");
            let progress = std::mem::take(&mut slot.txn);
            if let Some(entry) = self.inflight.iter_mut().find(|e| e.tid == tid) {
                entry.records += progress.records;
                entry.prepared.insert(host.to_owned(), r);
            }
            self.propose_ready_commits(out);
            return;
        }
        self.hosts.get_mut(host).expect("checked").txn.prepared = Some(r);
        if self.hosts.values().all(|s| s.txn.prepared.is_some()) {
            self.all_prepared(tid, out);
        }
    }

    /// `host`'s replay of its tid verified (steps, aggregate against its
    /// journal and the ledger, output digest against the ledger). The tid is
    /// committed in the ledger, and what this host releases on `Commit` is
    /// exactly what the ledger recorded for it, so it needs no other host:
    /// it gets `Commit` and its next tid at once. A divergence found later on
    /// another host still fails the pipeline and stops everyone; outputs
    /// released by then were committed long ago. Only the last committed tid
    /// waits for every host: what follows is one transaction of all hosts
    /// (`finish_replay`).
    fn replay_passed(&mut self, host: &str, r: PreparedReport, out: &mut Vec<Action>) {
        let tid = r.tid;
        let n_hosts = self.hosts.len();
        let epoch = self.ledger.epoch;
        // A host's position is a tid in the queue until every host passed
        // it; if that ever breaks, stop loudly rather than guess (or panic).
        let position = match &self.phase {
            Phase::Replaying { queue, .. } => replay_index(queue, tid),
            _ => None,
        };
        let (Some(i), Some(slot)) = (position, self.hosts.get_mut(host)) else {
            let d = Diagnosis {
                summary: format!("internal error: host {host}'s replay position tid {tid} is not in the replay queue ({})", self.describe()),
                host: Some(host.to_owned()),
                tid: Some(tid),
                hint: "a coordinator bug: keep the coordinator log and report it; Resume recovers the pipeline".into(),
                ..Default::default()
            };
            return self.fail(d, out);
        };
        let window = self.cfg.replay_window.max(1) as usize;
        let Phase::Replaying { tid: slowest, queue, at, sent } = &mut self.phase else { return };
        queue[i].passed += 1;
        queue[i].records += slot.txn.records;
        match queue.get(i + 1).map(|q| q.tid) {
            Some(next) => {
                set_host_tid(at, host, next);
                slot.txn = HostProgress::default();
                slot.commit_sent = tid;
                // The furthest tid started for this host, as a queue index
                // (tids before the queue's front are all passed).
                let started = sent.get(host).copied().unwrap_or(tid);
                let mut last_sent = replay_index(queue, started).unwrap_or(i).max(i);
                // The next Start rides on the Commit: without a window (or
                // at its edge) the host's next tid, as in a live commit;
                // inside one, the Start that tops the window up (the host
                // does with it exactly what it does with that Start alone).
                // One command per verified tid instead of two.
                let ride = if last_sent == i {
                    last_sent = i + 1;
                    Some(next)
                } else if last_sent - i < window && last_sent + 1 < queue.len() {
                    last_sent += 1;
                    Some(queue[last_sent].tid)
                } else {
                    None
                };
                let cmd = Cmd::Commit { tid, next: ride.map(Start::replay_committed) };
                out.push(Action::Send { host: host.to_owned(), epoch, cmd });
                // Top the window up: at most `window` tids started and not
                // yet verified for this host.
                while last_sent - i < window && last_sent + 1 < queue.len() {
                    last_sent += 1;
                    let cmd = Cmd::Start(Start::replay_committed(queue[last_sent].tid));
                    out.push(Action::Send { host: host.to_owned(), epoch, cmd });
                }
                set_host_tid(sent, host, queue[last_sent].tid);
            }
            // Prepared in the last committed tid: waits for the others.
            None => slot.txn.prepared = Some(r),
        }
        // Tids every host has now passed. Hosts pass tids in queue order, so
        // these are a prefix of the queue.
        while let Some(q) = queue.front().filter(|q| q.passed == n_hosts) {
            out.push(Action::Notice(Notice::Committed { tid: q.tid, replayed: true, records: q.records }));
            queue.pop_front();
        }
        match queue.front() {
            Some(q) => *slowest = q.tid,
            // Every host is prepared in the last committed tid.
            None => self.finish_replay(Some(tid), out),
        }
    }

    /// Every host prepared the live (or continued) transaction `tid`:
    /// record its commit in the ledger.
    fn all_prepared(&mut self, tid: Tid, out: &mut Vec<Action>) {
        // A checkpoint needs no tid open in the ledger (invariant 5): not
        // while tids are begun ahead or wait to be recovered.
        let checkpoint_after = self.checkpoint_wanted() && !self.next_tid_begun();
        let hosts = self
            .hosts
            .iter()
            .map(|(h, s)| {
                let p = s.txn.prepared.as_ref().expect("all prepared");
                (h.clone(), HostTxnRecord::new(p.steps, &p.aggregate, p.output_digest))
            })
            .collect();
        let begin_next = (!checkpoint_after && !self.next_tid_begun()).then(|| self.ledger.tid_high_water + 1);
        out.push(Action::Propose(LedgerEntry::Commit { tid, hosts, begin_next }));
        self.phase = Phase::Running(Txn::Committing { tid, checkpoint_after });
    }

    fn on_committed(&mut self, host: &str, tid: Tid, out: &mut Vec<Action>) {
        let Some(slot) = self.hosts.get(host) else { return self.unknown_host(host, out) };
        let last = slot.last_committed;
        if tid <= last {
            return self.protocol_error(host, Some(tid), None,
                format!("Committed tids must increase; this host already committed {last}"), out);
        }
        if tid > self.ledger.last_committed {
            return self.protocol_error(host, Some(tid), None,
                format!("host committed tid {tid} but the ledger's last commit is {}", self.ledger.last_committed), out);
        }
        // Invariant 8: the coordinator never infers that a step happened,
        // and a host never commits a tid it was not told to.
        if tid > slot.commit_sent {
            return self.protocol_error(host, Some(tid), None,
                format!("host committed tid {tid} but this stream was sent Commit only up to tid {}", slot.commit_sent), out);
        }
        self.hosts.get_mut(host).expect("checked").last_committed = tid;
    }

    fn on_checkpoint_done(&mut self, host: &str, tid: Tid, out: &mut Vec<Action>) {
        if !self.hosts.contains_key(host) {
            return self.unknown_host(host, out);
        }
        match &self.phase {
            Phase::Running(Txn::Checkpointing { tid: want }) if *want == tid => {
                self.hosts.get_mut(host).expect("checked").acked = true;
                if self.hosts.values().all(|s| s.acked) {
                    out.push(Action::Propose(LedgerEntry::CheckpointComplete { tid }));
                    self.phase = Phase::Running(Txn::RecordingCheckpoint { tid });
                }
            }
            Phase::Failed(_) | Phase::Stopped { .. } => {}
            _ => self.protocol_error(host, Some(tid), None, format!("CheckpointDone({tid}) unexpected ({})", self.describe()), out),
        }
    }

    fn on_restored(&mut self, host: &str, checkpoint: Tid, out: &mut Vec<Action>) {
        if !self.hosts.contains_key(host) {
            return self.unknown_host(host, out);
        }
        match &self.phase {
            Phase::Restoring { checkpoint: want } if *want == checkpoint => {
                self.hosts.get_mut(host).expect("checked").acked = true;
                if self.hosts.values().all(|s| s.acked) {
                    let queue: VecDeque<ReplayTid> = self
                        .ledger
                        .txns
                        .values()
                        .filter(|t| t.tid > checkpoint && t.status == TxnStatus::Committed)
                        .map(|t| ReplayTid { tid: t.tid, passed: 0, records: 0 })
                        .collect();
                    let open_tid = self.ledger.open_txn().map(|t| t.tid);
                    out.push(Action::Notice(Notice::Recovering {
                        epoch: self.ledger.epoch,
                        checkpoint,
                        replay_tids: queue.iter().map(|q| q.tid).collect(),
                        open_tid,
                    }));
                    self.start_replay(queue, out);
                }
            }
            Phase::Failed(_) | Phase::Stopped { .. } => {}
            _ => self.protocol_error(host, None, None, format!("Restored({checkpoint}) unexpected ({})", self.describe()), out),
        }
    }

    fn on_host_error(&mut self, host: &str, kind: String, message: String, tid: Tid, out: &mut Vec<Action>) {
        if !self.hosts.contains_key(host) {
            return self.unknown_host(host, out);
        }
        if kind == "disk_write" {
            // Not a mismatch: the host's disk refused a journal or sink
            // write (a full disk). The agent exits after this report, so
            // that a restart reopens its files from disk; as for any host that
            // goes away, the pipeline waits for it, fail closed, and
            // recovers once it is back: the open tid is replayed and
            // continues, so nothing a host acknowledged is dropped. Failing
            // the pipeline instead recorded the open tid as failed, and its
            // journaled input (pushes acknowledged to clients) with it.
            let why = format!(
                "it cannot write to its disk ({message}); free space or fix the disk under its data directory and restart \
                 its agent (it exits after such a failure): the pipeline recovers once it is back"
            );
            return self.drop_host(host, why, out);
        }
        let hint = match kind.as_str() {
            "stale_epoch" => "the host has seen a newer coordinator epoch than this ledger: another coordinator group \
                              drives it, or this ledger was restored from an old copy; check --coordinator and --data-dir",
            "journal" => "the host's journal is damaged or belongs elsewhere; read the host's log for the file and offset",
            "checkpoint" => "a checkpoint of this host could not be restored (or taken, for a reason other than its disk); \
                             the message names it. A damaged checkpoint file cannot be rebuilt (the journal before it is \
                             collected): restore the host's data volume from a backup, then Resume",
            "sink" => "the host's output sink failed (the message says how; a failed write to the disk is reported as \
                       disk_write instead and only loses the host); read the host's log, then Resume",
            _ => "read the host's log around this time",
        };
        self.fail(
            Diagnosis {
                summary: format!("host {host} reported an error (kind {kind:?}): {message}"),
                host: Some(host.to_owned()),
                tid: (tid != 0).then_some(tid),
                hint: hint.into(),
                ..Default::default()
            },
            out,
        );
    }

    fn on_applied(&mut self, entry: LedgerEntry, result: Result<(), LedgerError>, out: &mut Vec<Action>) {
        if let Err(e) = result {
            // The core only proposes entries it believes valid: a rejection
            // is a bug (or a second coordinator writing the same ledger).
            return self.fail(
                Diagnosis {
                    summary: format!("the ledger rejected {}: {e}", entry_name(&entry)),
                    hint: "this is a coordinator bug or two coordinators share one ledger; keep the data directory and report it".into(),
                    ..Default::default()
                },
                out,
            );
        }
        if let Err(e) = self.ledger.apply(&entry) {
            // The replicated ledger accepted what the core's copy rejects:
            // the copies diverged. Stop loudly rather than panic the daemon.
            return self.fail(
                Diagnosis {
                    summary: format!("the ledger applied {} but this coordinator's copy of it rejects that: {e}", entry_name(&entry)),
                    hint: "coordinator bug: its view of the ledger diverged; keep the data directory and report it, then restart \
                           the coordinator"
                        .into(),
                    ..Default::default()
                },
                out,
            );
        }
        match (&self.phase, &entry) {
            // Hosts may have said hello before the new ledger's Init landed.
            (Phase::Joining, LedgerEntry::Init { .. }) => self.try_start_recovery(out),
            (Phase::Bumping { epoch }, LedgerEntry::NewEpoch { epoch: e }) if epoch == e => self.start_epoch(out),
            (Phase::Running(Txn::Beginning { tid }), LedgerEntry::Begin { tid: t }) if tid == t => {
                let tid = *tid;
                self.broadcast(Cmd::Start(Start::live(tid)), out);
                self.open(tid, Mode::Live);
                self.fill_ahead(out);
            }
            // Commit pipeline: a tid begun ahead.
            (Phase::Running(_), LedgerEntry::Begin { tid: t }) if self.beginning.front() == Some(t) => {
                self.beginning.pop_front();
                self.ahead.push_back(*t);
                self.prepare_if_due(out);
            }
            // Commit pipeline: the oldest inflight tid is committed (and
            // maybe one more tid begun ahead in the same entry).
            (Phase::Running(_), LedgerEntry::Commit { tid: t, begin_next, .. })
                if self.inflight.front().is_some_and(|e| e.tid == *t && e.proposed)
                    && begin_next.is_none_or(|b| self.beginning.front() == Some(&b)) =>
            {
                if begin_next.is_some() {
                    let b = self.beginning.pop_front().expect("checked");
                    self.ahead.push_back(b);
                }
                let entry = self.inflight.pop_front().expect("checked");
                out.push(Action::Notice(Notice::Committed { tid: entry.tid, replayed: false, records: entry.records }));
                self.broadcast_commit(entry.tid, None, out);
                self.fill_ahead(out);
                self.prepare_if_due(out);
            }
            (Phase::Running(Txn::Committing { tid, checkpoint_after }), LedgerEntry::Commit { tid: t, begin_next, .. })
                if tid == t =>
            {
                let (tid, checkpoint_after) = (*tid, *checkpoint_after);
                let records = self.txn_records();
                out.push(Action::Notice(Notice::Committed { tid, replayed: false, records }));
                match (checkpoint_after, *begin_next) {
                    (true, None) => {
                        self.broadcast_commit(tid, None, out);
                        self.broadcast(Cmd::Checkpoint { tid }, out);
                        for s in self.hosts.values_mut() {
                            s.acked = false;
                        }
                        self.phase = Phase::Running(Txn::Checkpointing { tid });
                    }
                    (false, Some(next)) => {
                        self.broadcast_commit(tid, Some(Start::live(next)), out);
                        self.open(next, Mode::Live);
                        self.fill_ahead(out);
                    }
                    // The next tid was begun before: ahead in a pipeline, or
                    // a begun tid that recovery continues.
                    (false, None) if self.next_tid_begun() => match self.start_next_begun(out) {
                        Some(start) => self.broadcast_commit(tid, Some(start), out),
                        None => self.fail(
                            Diagnosis {
                                summary: format!("internal error: tid {tid} committed with no next tid begun ({})", self.describe()),
                                tid: Some(tid),
                                hint: "a coordinator bug: keep the coordinator log and report it; Resume recovers the pipeline".into(),
                                ..Default::default()
                            },
                            out,
                        ),
                    },
                    // Not the entry this core proposed: someone else writes
                    // this ledger. Never guess; stop.
                    (_, other) => self.fail(
                        Diagnosis {
                            summary: format!(
                                "the ledger committed tid {tid} with begin_next {other:?}, not the entry this coordinator proposed"
                            ),
                            tid: Some(tid),
                            hint: "two coordinators share one ledger; stop all but one and keep the data directory".into(),
                            ..Default::default()
                        },
                        out,
                    ),
                }
            }
            (Phase::Running(Txn::RecordingCheckpoint { tid }), LedgerEntry::CheckpointComplete { tid: t }) if tid == t => {
                let tid = *tid;
                self.checkpoint_requested = false;
                self.prepared_since_checkpoint = 0;
                out.push(Action::Notice(Notice::CheckpointComplete { tid }));
                self.broadcast(Cmd::CheckpointComplete { tid }, out);
                self.begin_next(out);
            }
            // From Restoring on, the core's proposals are the ones matched
            // above, applied in the order proposed: entries proposed before
            // the epoch began were applied before its NewEpoch. Anything
            // else was written by someone else.
            (Phase::Restoring { .. } | Phase::Replaying { .. } | Phase::Running(_), _) => {
                let d = Diagnosis {
                    summary: format!(
                        "the ledger applied {}, which this coordinator did not propose ({})",
                        entry_name(&entry),
                        self.describe()
                    ),
                    hint: "another coordinator may be writing this ledger; run one coordinator per data directory".into(),
                    ..Default::default()
                };
                self.fail(d, out);
            }
            // Elsewhere it only updates the ledger view: the Init entry, a
            // Fail record, or an entry proposed before the pipeline moved on
            // (e.g. a Commit that lands after a host was lost; recovery
            // replays it).
            (Phase::Joining | Phase::Bumping { .. } | Phase::Failed(_) | Phase::Stopped { .. }, _) => {}
        }
    }

    fn on_tick(&mut self, out: &mut Vec<Action>) {
        // Report deadlines, only while the pipeline waits on hosts.
        if self.phase.is_active() {
            let late: Vec<(HostId, ConnId)> = self
                .hosts
                .iter()
                .filter_map(|(h, s)| {
                    let conn = s.conn?;
                    self.past_deadline(s).then(|| (h.clone(), conn))
                })
                .collect();
            for (host, conn) in late {
                if self.hosts[&host].conn != Some(conn) {
                    continue; // already closed by the recovery an earlier late host started
                }
                let why = format!("no report or heartbeat for over {} ms", self.cfg.report_deadline_ms);
                self.drop_host(&host, why, out);
            }
        }
        self.prepare_if_due(out);
    }

    /// The commit policy: Prepare the open transaction once it has been
    /// open for the commit interval, or a host ran `txn_steps_max` steps in
    /// it, or the hosts ingested `txn_records_max` records. Checked on every
    /// tick and after every step report, so a size limit acts at once.
    fn prepare_if_due(&mut self, out: &mut Vec<Action>) {
        let Phase::Running(Txn::Open { tid, opened_us, mode }) = self.phase else { return };
        // Hosts still in an inflight tid have not started this one.
        let current = || self.hosts.iter().filter(|(h, _)| self.behind_in(h).is_none()).map(|(_, s)| s);
        let steps_max = current().map(|s| s.txn.steps).max().unwrap_or(0);
        let records: u64 = current().map(|s| s.txn.records).sum();
        let due = self.now_us.saturating_sub(opened_us) >= self.commit_interval_us()
            || steps_max >= self.cfg.txn_steps_max
            || records >= self.cfg.txn_records_max;
        if !due || self.pipeline_waits() {
            return;
        }
        self.prepared_since_checkpoint += 1;
        // Not full here (`pipeline_waits`): prepare with the next tid opened
        // when one is begun ahead.
        if self.cfg.pipeline_depth > 1 && mode == Mode::Live {
            if let Some(next) = self.ahead.pop_front() {
                self.broadcast(Cmd::Prepare { tid, next: Some(Start::live(next)) }, out);
                self.inflight.push_back(Inflight { tid, prepared: BTreeMap::new(), records: 0, proposed: false });
                // Each host's progress in `tid` stays until its Prepared.
                self.phase = Phase::Running(Txn::Open { tid: next, mode: Mode::Live, opened_us: self.now_us });
                self.fill_ahead(out);
                return;
            }
        }
        self.broadcast(Cmd::Prepare { tid, next: None }, out);
        self.phase = Phase::Running(Txn::Preparing { tid, mode });
    }

    /// A due open tid waits rather than prepares: the pipeline is full (an
    /// older commit must land first), or the next tid's `Begin` is on its
    /// way.
    fn pipeline_waits(&self) -> bool {
        let Phase::Running(Txn::Open { mode: Mode::Live, .. }) = self.phase else { return false };
        if self.cfg.pipeline_depth <= 1 {
            return false;
        }
        let full = (self.inflight.len() as u64) + 1 >= self.cfg.pipeline_depth;
        full || (self.ahead.is_empty() && !self.beginning.is_empty())
    }

    /// Commit pipeline: one more tid should be begun ahead of the open one
    /// (fewer than the depth are begun, and not past the next scheduled
    /// checkpoint: invariant 5 wants the tid before it to be the last
    /// begun). Only with the open tid's Begin applied and no commit entry
    /// that begins a tid in flight outside `beginning`, so that every tid
    /// above the ledger's high-water mark is in `beginning`.
    fn begin_wanted(&self) -> bool {
        if self.cfg.pipeline_depth <= 1 || self.checkpoint_requested || !matches!(self.phase, Phase::Running(Txn::Open { .. })) {
            return false;
        }
        let unprepared = 1 + self.ahead.len() as u64 + self.beginning.len() as u64;
        // A tid whose commit is proposed counts as gone: a Begin riding on
        // that commit entry becomes usable only when the commit applies.
        let begun = self.inflight.iter().filter(|e| !e.proposed).count() as u64 + unprepared;
        let every = self.cfg.checkpoint_every_txns;
        begun < self.cfg.pipeline_depth && (every == 0 || self.prepared_since_checkpoint + unprepared < every)
    }

    /// Reserves the next tid to begin ahead (`begin_wanted`).
    fn next_begin(&mut self) -> Tid {
        let last = self.beginning.back().or(self.ahead.back()).copied().unwrap_or(0);
        let tid = self.ledger.tid_high_water.max(last) + 1;
        self.beginning.push_back(tid);
        tid
    }

    /// Commit pipeline: begins tids ahead of the open one (`begin_wanted`).
    /// A `Begin` rides on the next inflight commit entry when one is coming
    /// (`propose_ready_commits`), so a steady pipeline writes one ledger
    /// entry per tid; a `Begin` entry of its own only when no commit is
    /// coming or nothing at all is begun ahead.
    fn fill_ahead(&mut self, out: &mut Vec<Action>) {
        while self.begin_wanted() {
            let carrier = self.inflight.iter().any(|e| !e.proposed);
            if carrier && !(self.ahead.is_empty() && self.beginning.is_empty()) {
                return;
            }
            let tid = self.next_begin();
            out.push(Action::Propose(LedgerEntry::Begin { tid }));
        }
    }

    /// The tid the host's next report is about when it is still in an
    /// inflight tid (commit pipeline), else `None`.
    fn behind_in(&self, host: &str) -> Option<Tid> {
        self.inflight.iter().find(|e| !e.prepared.contains_key(host)).map(|e| e.tid)
    }

    /// Proposes the commit of every inflight tid, oldest first, that every
    /// host has prepared. Hosts prepare in tid order, so these are a prefix.
    fn propose_ready_commits(&mut self, out: &mut Vec<Action>) {
        let n = self.hosts.len();
        while let Some(i) = self.inflight.iter().position(|e| !e.proposed) {
            if self.inflight[i].prepared.len() < n {
                break;
            }
            self.inflight[i].proposed = true;
            let begin_next = self.begin_wanted().then(|| self.next_begin());
            let entry = &self.inflight[i];
            let hosts = entry
                .prepared
                .iter()
                .map(|(h, p)| (h.clone(), HostTxnRecord::new(p.steps, &p.aggregate, p.output_digest)))
                .collect();
            out.push(Action::Propose(LedgerEntry::Commit { tid: entry.tid, hosts, begin_next }));
        }
    }

    fn checkpoint_wanted(&self) -> bool {
        self.checkpoint_requested
            || (self.cfg.checkpoint_every_txns > 0 && self.prepared_since_checkpoint >= self.cfg.checkpoint_every_txns)
    }

    /// A tid after the one committing is already begun in the ledger (or
    /// its `Begin` is applied before this commit): it goes next.
    fn next_tid_begun(&self) -> bool {
        !self.recovering.is_empty() || self.open_last.is_some() || !self.ahead.is_empty() || !self.beginning.is_empty()
    }

    /// Opens the next begun tid (`next_tid_begun`) in the core and returns
    /// the `Start` that goes with the commit before it. `None` only if
    /// nothing is begun after all (a bug the caller reports).
    fn start_next_begun(&mut self, out: &mut Vec<Action>) -> Option<Start> {
        if let Some(t) = self.recovering.pop_front() {
            self.open(t, Mode::Replay);
            self.phase = Phase::Running(Txn::Preparing { tid: t, mode: Mode::Replay });
            return Some(Start::replay_committed(t));
        }
        if let Some(t) = self.open_last.take() {
            self.open(t, Mode::Replay);
            return Some(Start::replay_open(t));
        }
        // Begins proposed before this commit are applied by now (`fill_ahead`
        // proposes none while a commit that begins a tid is in flight).
        let t = self.ahead.pop_front()?;
        self.open(t, Mode::Live);
        self.fill_ahead(out);
        Some(Start::live(t))
    }

    /// Forgets the pipeline and recovery queues: a new epoch rebuilds them
    /// from the ledger.
    fn reset_pipeline(&mut self) {
        self.inflight.clear();
        self.ahead.clear();
        self.beginning.clear();
        self.recovering.clear();
        self.open_last = None;
    }

    /// When the open transaction's commit interval runs out (`now_us`
    /// scale), if one is open: the shell sends a `Tick` then rather than
    /// waiting for its periodic one, so a short interval is not rounded up
    /// to the tick.
    pub fn commit_due_us(&self) -> Option<u64> {
        match self.phase {
            // A tid waiting on the pipeline is woken by the ledger instead.
            Phase::Running(Txn::Open { .. }) if self.pipeline_waits() => None,
            Phase::Running(Txn::Open { opened_us, .. }) => Some(opened_us.saturating_add(self.commit_interval_us())),
            _ => None,
        }
    }

    /// The commit interval on the core's clock (configured in ms).
    fn commit_interval_us(&self) -> u64 {
        self.cfg.commit_interval_ms.saturating_mul(1000)
    }

    fn on_admin_stop(&mut self, reason: String, out: &mut Vec<Action>) {
        // A failed pipeline is already stopped (the hosts were told so), and
        // its diagnosis must stay for the Admin API until Resume.
        if matches!(self.phase, Phase::Stopped { .. } | Phase::Failed(_)) {
            return;
        }
        self.broadcast(Cmd::Stop { reason: format!("operator: {reason}") }, out);
        self.set_phase(Phase::Stopped { reason: reason.clone() }, format!("operator asked: {reason}"), out);
    }

    fn on_admin_resume(&mut self, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Failed(_) | Phase::Stopped { .. }) {
            self.set_phase(Phase::Joining, "operator resumed".into(), out);
            self.rejoin_all("operator resumed; recovering".into(), out);
        }
    }

    /// Recovery starts from what every host says in a fresh Hello: its
    /// checkpoints and journal summary change while it runs, so a Hello
    /// from before is stale. Every stream is closed (hosts stop stepping and
    /// reconnect at once), and recovery begins when all are back.
    fn rejoin_all(&mut self, why: String, out: &mut Vec<Action>) {
        for (host, slot) in self.hosts.iter_mut() {
            if let Some(conn) = slot.conn.take() {
                slot.hello = None;
                out.push(Action::Drop { conn, host: host.clone(), why: why.clone() });
            }
        }
        self.try_start_recovery(out);
    }

    // --------------------------------------------------------- transitions

    /// Once every member host is connected, validate their journals against
    /// the ledger (invariant 6) and start a new epoch.
    fn try_start_recovery(&mut self, out: &mut Vec<Action>) {
        if self.phase != Phase::Joining || !self.ledger.is_initialised() {
            return;
        }
        if self.hosts.values().any(|s| s.conn.is_none()) {
            return;
        }
        let checkpoint = match self.recovery_checkpoint() {
            Ok(c) => c,
            Err(d) => return self.fail(*d, out),
        };
        // Hosts that lack the newest complete checkpoint are checked first:
        // one that came back with an empty or another volume pulls the
        // recovery checkpoint down for everyone, and then a healthy host's
        // journal, collected up to that checkpoint, no longer reaches back
        // either. The diagnosis must name the host that lost its data.
        let newest = self.ledger.checkpoints.iter().next_back().copied().unwrap_or(0);
        let mut order: Vec<(&HostId, &HostSlot)> = self.hosts.iter().collect();
        order.sort_by_key(|(_, s)| s.hello.as_ref().is_some_and(|h| newest == 0 || h.checkpoints.contains(&newest)));
        for (host, slot) in order {
            let hello = slot.hello.as_ref().expect("connected hosts said hello");
            if let Some(mut d) = verify::journal_against_ledger(host, hello, &self.ledger, checkpoint) {
                if let Some(was) = slot.data_id_was {
                    d.hint = format!(
                        "{} (host {host} came back with another data directory than it had: data id {:016x}, was {was:016x})",
                        d.hint, hello.data_id
                    );
                }
                return self.fail(d, out);
            }
        }
        // A tid the pipeline failed in is reopened, not skipped: its
        // journaled steps hold input the hosts acknowledged (pushes), so
        // the recovery replays it as an open tid (invariant 4) once the
        // ledger has it begun again, which it has before the NewEpoch
        // below applies. A cause that was fixed (an engine made
        // deterministic, a disk replaced) then loses nothing; one that was
        // not fails the tid again, as loudly as the first time.
        // `note_recovery` names them.
        let reopen: Vec<Tid> = self.ledger.reopenable().collect();
        for tid in reopen {
            out.push(Action::Propose(LedgerEntry::Reopen { tid }));
        }
        let epoch = self.ledger.epoch + 1;
        out.push(Action::Propose(LedgerEntry::NewEpoch { epoch }));
        self.set_phase(Phase::Bumping { epoch }, "every host joined".into(), out);
    }

    /// The newest checkpoint the ledger recorded complete that every host
    /// still holds.
    fn recovery_checkpoint(&self) -> Result<Tid, Box<Diagnosis>> {
        let held = |c: Tid| {
            c == 0 || self.hosts.values().all(|s| s.hello.as_ref().is_some_and(|h| h.checkpoints.contains(&c)))
        };
        let newest = self.ledger.checkpoints.iter().rev().copied().find(|c| held(*c)).unwrap_or(0);
        // Restoring the empty state needs every transaction since tid 1.
        let oldest_kept = self.ledger.txns.keys().next().copied();
        if newest == 0 && oldest_kept.is_some_and(|t| t > 1) {
            let missing: Vec<String> = self
                .hosts
                .iter()
                .filter(|(_, s)| !s.hello.as_ref().is_some_and(|h| h.checkpoints.contains(&self.ledger.newest_checkpoint())))
                .map(|(h, _)| h.clone())
                .collect();
            return Err(Box::new(Diagnosis {
                summary: "no complete checkpoint is held by every host, and the ledger no longer has the history to replay from the start".into(),
                host: missing.first().cloned(),
                expected: Some(format!("checkpoint {} on hosts {:?}", self.ledger.newest_checkpoint(), missing)),
                actual: Some("missing".into()),
                hint: "restore the missing host's data volume (its checkpoints directory); do not start it on an empty volume".into(),
                ..Default::default()
            }));
        }
        Ok(newest)
    }

    /// The new epoch is durable (every host is fenced off from older
    /// coordinators): continue from what the hosts kept if all of it fits
    /// the ledger, otherwise restore and replay (`resume::plan`).
    fn start_epoch(&mut self, out: &mut Vec<Action>) {
        let epoch = self.ledger.epoch;
        self.reset_pipeline();
        match resume::plan(&self.ledger, &self.hosts) {
            Ok(plan) => self.continue_epoch(plan, out),
            Err(why) => {
                self.note_recovery(Recovery { epoch, path: RecoveryPath::Replay, why }, out);
                self.restore(out);
            }
        }
    }

    fn note_recovery(&mut self, mut r: Recovery, out: &mut Vec<Action>) {
        // Open tids with a failure on record were reopened after it.
        let reopened: Vec<Tid> =
            self.ledger.open_tids().filter(|t| self.ledger.txn(*t).is_some_and(|r| r.failure.is_some())).collect();
        if !reopened.is_empty() {
            r.why = format!(
                "tids {reopened:?}, in which the pipeline failed, are reopened: their journaled steps are replayed \
                 (the earlier diagnosis stays on the tid in ListTransactions); {}",
                r.why
            );
        }
        self.last_recovery = Some(r.clone());
        out.push(Action::Notice(Notice::Recovery(r)));
    }

    /// Continues without a restore: what the lost coordinator would have
    /// sent next, per host. `Commit{C}` goes only to hosts prepared in the
    /// ledger's last commit; the open tid (if any) is started where a host
    /// is idle and then prepared everywhere, so it commits through the
    /// normal verification with each host's progress seeded from its Hello
    /// (`verify::prepared_matches_steps` holds its Prepared to that). With
    /// no tid open, every host is idle at the last commit: begin the next.
    fn continue_epoch(&mut self, plan: BTreeMap<HostId, resume::HostResume>, out: &mut Vec<Action>) {
        let c = self.ledger.last_committed;
        let opens: Vec<Tid> = self.ledger.open_tids().collect();
        let open = opens.first().copied();
        // The tid every host is brought to: the furthest any host reached
        // (commit pipeline), else the oldest open one. Hosts behind it are
        // caught up with `Prepare{T, next}`; the tids before it wait in
        // `inflight` for their commit; the tids after it were begun ahead.
        let target = plan.values().filter_map(|r| r.current(open)).max().or(open);
        self.ahead = opens.iter().copied().filter(|t| target.is_some_and(|m| *t > m)).collect();
        self.inflight = opens
            .iter()
            .copied()
            .filter(|t| target.is_some_and(|m| *t < m))
            .map(|tid| Inflight { tid, prepared: BTreeMap::new(), records: 0, proposed: false })
            .collect();
        // `Prepare{t, next}` for every open tid from `from` up to the target.
        let catch_up = |from: Tid| -> Vec<Cmd> {
            let path: Vec<Tid> = opens.iter().copied().filter(|t| *t >= from && target.is_some_and(|m| *t <= m)).collect();
            path.windows(2).map(|w| Cmd::Prepare { tid: w[0], next: Some(Start::live(w[1])) }).collect()
        };
        let mut states = Vec::new();
        let mut sends = Vec::new();
        for (host, resume) in plan {
            let slot = self.hosts.get_mut(&host).expect("planned for members");
            let kept = slot.hello.as_ref().and_then(|h| h.resumable.as_ref()).map(|r| r.last_committed).unwrap_or(c);
            slot.acked = false;
            slot.last_committed = kept;
            slot.commit_sent = kept;
            slot.txn = HostProgress::default();
            match resume {
                resume::HostResume::Idle => {
                    states.push(format!("{host} idle"));
                    if let Some(o) = open {
                        sends.push((host.clone(), Cmd::Start(Start::live(o))));
                        sends.extend(catch_up(o).into_iter().map(|cmd| (host.clone(), cmd)));
                    }
                }
                resume::HostResume::Open(progress) => {
                    states.push(format!("{host} in tid {} with {} steps", open.unwrap_or_default(), progress.steps));
                    slot.txn = progress;
                    if let Some(o) = open {
                        sends.extend(catch_up(o).into_iter().map(|cmd| (host.clone(), cmd)));
                    }
                }
                resume::HostResume::CommitPending => {
                    states.push(format!("{host} prepared in tid {c}, missing its Commit"));
                    slot.commit_sent = c;
                    sends.push((host.clone(), Cmd::Commit { tid: c, next: open.map(Start::live) }));
                    if let Some(o) = open {
                        sends.extend(catch_up(o).into_iter().map(|cmd| (host.clone(), cmd)));
                    }
                }
                resume::HostResume::Pipelined { commit, prepared, at } => {
                    let held = commit.iter().copied().chain(prepared.iter().map(|p| p.tid)).collect::<Vec<_>>();
                    match &at {
                        Some((tid, progress)) => {
                            states.push(format!("{host} holding prepared tids {held:?} and in tid {tid} with {} steps", progress.steps))
                        }
                        None => states.push(format!("{host} holding prepared tids {held:?}, all committed")),
                    }
                    if let Some(last) = commit.last() {
                        slot.commit_sent = *last;
                    }
                    let n = commit.len();
                    for (i, t) in commit.into_iter().enumerate() {
                        // Idle after the last one: it carries the next Start.
                        let next = if i + 1 == n && at.is_none() { open.map(Start::live) } else { None };
                        sends.push((host.clone(), Cmd::Commit { tid: t, next }));
                    }
                    for p in prepared {
                        if let Some(entry) = self.inflight.iter_mut().find(|e| e.tid == p.tid) {
                            entry.records += p.aggregate.records();
                            entry.prepared.insert(host.clone(), p);
                        }
                    }
                    let from = match at {
                        Some((tid, progress)) => {
                            slot.txn = progress;
                            Some(tid)
                        }
                        None => open,
                    };
                    if let Some(from) = from {
                        sends.extend(catch_up(from).into_iter().map(|cmd| (host.clone(), cmd)));
                    }
                }
            }
        }
        let epoch = self.ledger.epoch;
        let at = match (open, target) {
            (Some(o), Some(m)) if m > o => format!("last commit tid {c}, open tids {o}..={m}"),
            (Some(o), _) => format!("last commit tid {c}, open tid {o}"),
            (None, _) => format!("last commit tid {c}, no tid open"),
        };
        let why = format!("every host kept a state that fits the ledger ({at}): {}", states.join(", "));
        self.note_recovery(Recovery { epoch, path: RecoveryPath::Continue, why }, out);
        for (host, cmd) in sends {
            out.push(Action::Send { host, epoch, cmd });
        }
        out.push(Action::Notice(Notice::PipelineState {
            from: self.phase.name().into(),
            to: "Running".into(),
            why: format!("epoch {epoch} continues without a restore"),
        }));
        match target {
            Some(m) => {
                self.prepared_since_checkpoint += 1 + self.inflight.len() as u64;
                self.broadcast(Cmd::Prepare { tid: m, next: None }, out);
                self.phase = Phase::Running(Txn::Preparing { tid: m, mode: Mode::Live });
                // Tids every host had prepared before the failover.
                self.propose_ready_commits(out);
            }
            None => self.begin_next(out),
        }
    }

    fn restore(&mut self, out: &mut Vec<Action>) {
        let checkpoint = match self.recovery_checkpoint() {
            Ok(c) => c,
            Err(d) => return self.fail(*d, out),
        };
        for s in self.hosts.values_mut() {
            s.acked = false;
            s.txn = HostProgress::default();
            // Replay re-commits tids after the checkpoint on every host.
            s.last_committed = checkpoint;
            s.commit_sent = checkpoint;
        }
        self.broadcast(Cmd::Restore { checkpoint }, out);
        self.set_phase(Phase::Restoring { checkpoint }, format!("epoch {} begins", self.ledger.epoch), out);
    }

    /// Every host restored the checkpoint: replay the committed tids after
    /// it, every host from the first, each at its own pace
    /// (`replay_passed`); with none to replay, go on at once.
    fn start_replay(&mut self, queue: VecDeque<ReplayTid>, out: &mut Vec<Action>) {
        let Some(first) = queue.front().map(|q| q.tid) else {
            return self.finish_replay(None, out);
        };
        for s in self.hosts.values_mut() {
            s.txn = HostProgress::default();
        }
        // The first `replay_window` tids go out at once; each verified tid
        // then tops its host's window up (`replay_passed`).
        let window = (self.cfg.replay_window.max(1) as usize).min(queue.len());
        for q in queue.iter().take(window) {
            self.broadcast(Cmd::Start(Start::replay_committed(q.tid)), out);
        }
        let last_sent = queue[window - 1].tid;
        let at = self.hosts.keys().map(|h| (h.clone(), first)).collect();
        let sent = self.hosts.keys().map(|h| (h.clone(), last_sent)).collect();
        self.set_phase_quiet(Phase::Replaying { tid: first, queue, at, sent });
    }

    /// Every host has passed every committed tid (`last`, the last of them,
    /// is prepared everywhere and its Commit is sent here, piggy-backing the
    /// next Start): hand over to the open last transaction, or begin a
    /// fresh one.
    fn finish_replay(&mut self, last: Option<Tid>, out: &mut Vec<Action>) {
        for s in self.hosts.values_mut() {
            s.txn = HostProgress::default();
        }
        // Invariant 4: the last transaction may have been begun but never
        // committed (crash mid-transaction). Hosts re-run what they journaled
        // under it (Start{Replay}) and, having no Prepare yet, continue it
        // live; it then commits normally. With a commit pipeline several
        // tids may be begun and uncommitted (`plan_open_tids`).
        self.plan_open_tids();
        if self.next_tid_begun() {
            let Some(start) = self.start_next_begun(out) else { return };
            self.send_commit_then(last, Some(start), out);
            let why = match (start.mode, start.prepare) {
                (Mode::Replay, true) => format!(
                    "replay done; tids {:?}, prepared but not committed before the crash, are replayed at their journaled \
                     boundary and committed, then {}",
                    std::iter::once(start.tid).chain(self.recovering.iter().copied()).collect::<Vec<_>>(),
                    match self.open_last {
                        Some(t) => format!("open tid {t} continues"),
                        None => "the next tid begins".into(),
                    }
                ),
                (Mode::Replay, false) => format!("replay done; open tid {} continues", start.tid),
                _ => format!("replay done; tid {}, begun before, starts", start.tid),
            };
            self.note_phase("Running", why, out);
            return;
        }
        self.send_commit_then(last, None, out);
        self.note_phase("Running", "replay done".into(), out);
        self.begin_next(out);
    }

    /// Sorts the ledger's begun, uncommitted tids for the pipeline after a
    /// replay (module docs, "Commit pipeline"): the last one any host
    /// journaled steps for (or that lies under a failed tid's steps)
    /// continues live (`open_last`, invariant 4); those before it were
    /// prepared before the crash and are replayed at their journaled
    /// boundary and committed (`recovering`); those after it were begun
    /// ahead and never started (`ahead`). Without a pipeline there is at
    /// most one, the open last tid.
    fn plan_open_tids(&mut self) {
        self.reset_pipeline();
        let open: Vec<Tid> = self.ledger.open_tids().collect();
        let Some(&first) = open.first() else { return };
        let journaled = |t: Tid| {
            self.hosts.values().any(|s| s.hello.as_ref().and_then(|h| h.journaled(t)).is_some_and(|j| j.steps > 0))
        };
        let failed_above = self
            .ledger
            .txns
            .range(first..)
            .filter(|(_, r)| r.status == TxnStatus::Failed)
            .map(|(t, _)| *t)
            .next_back();
        let with_steps = open.iter().rev().copied().find(|t| journaled(*t));
        let last = match (with_steps, failed_above) {
            (Some(s), Some(f)) if f > s => open.iter().copied().find(|t| *t > f),
            (Some(s), _) => Some(s),
            (None, Some(f)) => open.iter().copied().find(|t| *t > f),
            (None, None) => Some(first),
        };
        match last {
            Some(l) => {
                self.recovering = open.iter().copied().filter(|t| *t < l).collect();
                self.open_last = Some(l);
                self.ahead = open.iter().copied().filter(|t| *t > l).collect();
            }
            // Every begun tid lies under a failed tid's journaled steps.
            None => self.recovering = open.into_iter().collect(),
        }
    }

    fn send_commit_then(&mut self, committed: Option<Tid>, next: Option<Start>, out: &mut Vec<Action>) {
        match (committed, next) {
            (Some(tid), next) => self.broadcast_commit(tid, next, out),
            (None, Some(start)) => self.broadcast(Cmd::Start(start), out),
            (None, None) => {}
        }
    }

    fn begin_next(&mut self, out: &mut Vec<Action>) {
        let tid = self.ledger.tid_high_water + 1;
        out.push(Action::Propose(LedgerEntry::Begin { tid }));
        self.phase = Phase::Running(Txn::Beginning { tid });
    }

    fn open(&mut self, tid: Tid, mode: Mode) {
        for s in self.hosts.values_mut() {
            s.txn = HostProgress::default();
        }
        self.phase = Phase::Running(Txn::Open { tid, mode, opened_us: self.now_us });
    }

    fn fail(&mut self, d: Diagnosis, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Failed(_)) {
            return;
        }
        // Record the failure durably when it concerns a transaction the
        // ledger still has open, for the next recovery to reopen: its
        // journaled steps are replayed then (`try_start_recovery`), never
        // skipped. Not while its Commit is in flight: the ledger would
        // apply the Commit first and then reject the Fail.
        let committing = |t: Tid| {
            matches!(self.phase, Phase::Running(Txn::Committing { tid, .. }) if tid == t)
                || self.inflight.iter().any(|e| e.tid == t && e.proposed)
        };
        if let Some(t) = d.tid.filter(|t| self.ledger.open_tids().any(|o| o == *t) && !committing(*t)) {
            out.push(Action::Propose(LedgerEntry::Fail { tid: t, diagnosis: d.to_string(), reopen: true }));
        }
        self.reset_pipeline();
        self.broadcast(Cmd::Stop { reason: format!("pipeline failed: {}", d.summary) }, out);
        out.push(Action::Notice(Notice::Failed(d.clone())));
        let why = d.summary.clone();
        self.set_phase(Phase::Failed(d), why, out);
    }

    fn protocol_error(&mut self, host: &str, tid: Option<Tid>, step: Option<u64>, what: String, out: &mut Vec<Action>) {
        self.fail(
            Diagnosis {
                summary: format!("protocol violation by host {host}: {what}"),
                host: Some(host.to_owned()),
                tid,
                step,
                hint: "host agent and coordinator disagree on the protocol; check that both run the same version, and keep both logs"
                    .into(),
                ..Default::default()
            },
            out,
        );
    }

    fn unknown_host(&mut self, host: &str, _out: &mut [Action]) {
        // Streams are only accepted for member hosts and the shell drops
        // reports of streams it did not accept, so this is unreachable from
        // the network; ignoring keeps a daemon alive if it ever happens.
        tracing::warn!(%host, "report from a host that is not a member ignored");
    }

    fn broadcast(&self, cmd: Cmd, out: &mut Vec<Action>) {
        for (host, slot) in &self.hosts {
            if slot.conn.is_some() {
                out.push(Action::Send { host: host.clone(), epoch: self.ledger.epoch, cmd: cmd.clone() });
            }
        }
    }

    fn broadcast_commit(&mut self, tid: Tid, next: Option<Start>, out: &mut Vec<Action>) {
        self.broadcast(Cmd::Commit { tid, next }, out);
        for s in self.hosts.values_mut().filter(|s| s.conn.is_some()) {
            s.commit_sent = tid;
        }
    }

    fn set_phase(&mut self, to: Phase, why: String, out: &mut Vec<Action>) {
        let from = self.phase.name().to_string();
        let to_name = to.name().to_string();
        self.phase = to;
        if from != to_name {
            out.push(Action::Notice(Notice::PipelineState { from, to: to_name, why }));
        }
    }

    fn set_phase_quiet(&mut self, to: Phase) {
        self.phase = to;
    }

    fn note_phase(&self, to: &str, why: String, out: &mut Vec<Action>) {
        out.push(Action::Notice(Notice::PipelineState { from: "Replaying".into(), to: to.into(), why }));
    }

    // ---------------------------------------------------------- inspection

    fn validate_hello(&self, h: &Hello) -> Result<(), String> {
        if h.protocol_version != lockstep_proto::PROTOCOL_VERSION {
            return Err(format!(
                "host {} speaks protocol version {}, this coordinator speaks {}; run matching releases",
                h.host_id,
                h.protocol_version,
                lockstep_proto::PROTOCOL_VERSION
            ));
        }
        let cluster = if self.ledger.is_initialised() { &self.ledger.cluster_id } else { &self.cfg.cluster_id };
        if &h.cluster_id != cluster {
            return Err(format!(
                "host {} belongs to cluster {:?}, this coordinator runs cluster {cluster:?}; check the host's --cluster-id \
                 and --coordinator",
                h.host_id, h.cluster_id
            ));
        }
        if !self.hosts.contains_key(&h.host_id) {
            return Err(format!(
                "unknown host id {:?}: members of cluster {cluster:?} are {:?}; check the host's --host-id",
                h.host_id,
                self.hosts.keys().collect::<Vec<_>>()
            ));
        }
        if h.highest_epoch > self.ledger.epoch {
            return Err(format!(
                "host {} has seen epoch {}, newer than this ledger's epoch {}: this ledger is behind the pipeline. Either a \
                 newer leader took over while this coordinator was cut off (it catches up once it reaches its group; the \
                 host goes to the new leader), or this data dir holds an old or empty copy of the ledger (restored from a \
                 backup, or the ledger was lost; then point --data-dir at the current one)",
                h.host_id, h.highest_epoch, self.ledger.epoch
            ));
        }
        Ok(())
    }

    fn txn_records(&self) -> u64 {
        self.hosts.values().map(|s| s.txn.records).sum()
    }

    /// Short description of where the pipeline is, for error messages.
    pub fn describe(&self) -> String {
        match &self.phase {
            Phase::Running(t) => format!("Running, {t:?}"),
            // Not the whole queue: it may hold thousands of tids.
            Phase::Replaying { tid, queue, at, .. } => {
                let last = queue.back().map(|q| q.tid).unwrap_or(*tid);
                format!("Replaying committed tids {tid}..={last}, hosts at {at:?}")
            }
            p => format!("{p:?}"),
        }
    }
}

fn event_host(e: &Event) -> Option<&str> {
    match e {
        Event::Step { host, .. }
        | Event::Replayed { host, .. }
        | Event::Prepared { host, .. }
        | Event::Committed { host, .. }
        | Event::CheckpointDone { host, .. }
        | Event::Restored { host, .. }
        | Event::HostError { host, .. }
        | Event::Heartbeat { host } => Some(host),
        _ => None,
    }
}

fn entry_name(e: &LedgerEntry) -> String {
    match e {
        LedgerEntry::Init { cluster_id, .. } => format!("Init({cluster_id})"),
        LedgerEntry::NewEpoch { epoch } => format!("NewEpoch({epoch})"),
        LedgerEntry::Begin { tid } => format!("Begin({tid})"),
        LedgerEntry::Commit { tid, .. } => format!("Commit({tid})"),
        LedgerEntry::Fail { tid, .. } => format!("Fail({tid})"),
        LedgerEntry::Reopen { tid } => format!("Reopen({tid})"),
        LedgerEntry::CheckpointComplete { tid } => format!("CheckpointComplete({tid})"),
        LedgerEntry::Batch(entries) => format!("Batch({})", entries.iter().map(entry_name).collect::<Vec<_>>().join(", ")),
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod pipeline_tests;
#[cfg(test)]
mod resume_tests;
#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod tests;
