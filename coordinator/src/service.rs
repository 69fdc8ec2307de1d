//! The coordinator's async shell: gRPC services, the driver task that owns
//! the sans-IO core, and the supervisor that runs a driver only while this
//! node leads the ledger group.
//!
//! Leadership: [`supervise`] watches the raft leadership. When this node
//! becomes leader it waits until the ledger has applied everything (so the
//! tid high-water mark and open transaction are those of the whole group),
//! confirms the leadership with a quorum, and only then starts a driver with
//! a fresh core over that state; the core's first act toward hosts is a new
//! epoch (fencing). When leadership is lost (another node won a term, or a
//! ledger write did not commit within the propose timeout: cut off from the
//! quorum) the driver stops at once, closing every host stream with
//! UNAVAILABLE naming the leader, so hosts move to it. A follower serves
//! Admin reads from its copy of the ledger, marked stale, and turns writes
//! and host sessions away the same way.
//!
//! Every input (a host report, a raft commit, a timer tick, an operator
//! request) becomes one message on the driver's channel; the driver feeds it
//! to `Core::handle` and executes the returned actions in one `match`
//! (`Driver::execute`). Ledger proposals run on a separate proposer task, in
//! order, so the driver never blocks on an fsync and `Applied` events come
//! back in log order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream};
use lockstep_host_agent::drain::DRAIN_GRACE;
use lockstep_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, info_span, warn, Instrument};

use tokio::sync::watch;

use crate::core::{Action, Cmd, ConnId, Core, CoreConfig, Event, HostId, LedgerEntry, Notice, Phase, Txn};
use crate::ledger::TxnRecord;
use crate::raft::{Ledger, ProposeError};
use crate::wire;

/// Bound of each host stream's outgoing command queue, in batches (each
/// the commands the driver decided for that stream in one turn).
const HOST_COMMANDS_QUEUE_MAX: usize = 1024;

/// What the driver hands a host stream in one go: the commands of one
/// driver turn, in order (and, last, the status that ends the stream).
type CommandBatch = Vec<Result<pb::Command, Status>>;
/// Bound of the driver's input queue.
const DRIVER_QUEUE_MAX: usize = 4096;
/// Reports of one host stream forwarded to the driver as one message at
/// most (those already received; the reader never waits to fill it).
const REPORTS_FORWARDED_MAX: usize = 64;

/// A host stream that ends after this long without a report was dropped
/// for its silence by the server's keepalive (a ping unanswered for the
/// report deadline, `ServeOptions::ping_timeout`, after a quiet
/// `drain::CLIENT_PING`; while the pipeline is active the deadline acts
/// first), not closed by the host, which sends a heartbeat every 500 ms
/// and closes its stream right after its last report.
const STREAM_SILENT_END: Duration = lockstep_host_agent::drain::CLIENT_PING_TIMEOUT;

/// The largest host report this coordinator reads (tonic's default is
/// 4 MiB). A Hello carries a summary of every tid the host journaled since
/// its newest checkpoint, ~40 bytes each: 4 MiB was ~100 k tids, which a
/// cluster with automatic checkpoints off (`--checkpoint-every-txns 0`)
/// passes in minutes, after which a restarted host could never rejoin.
/// 64 MiB is ~1.5 M tids.
const HOST_REPORT_BYTES_MAX: usize = 64 << 20;
/// Raft writes handed over whose result the driver has not seen yet; the
/// core's proposals meanwhile queue up for the next write (a batch).
const PROPOSALS_IN_FLIGHT_MAX: usize = 2;
/// At most this many ledger entries in one raft entry.
const PROPOSAL_BATCH_MAX: usize = 64;
/// How often timers are checked.
const TICK_MS: u64 = 10;
/// A live commit is logged at info level only if no commit was in the last
/// this-many ms; the others go to debug, and the next info line counts
/// them. A demo's 200 ms interval still shows every commit, while a 1 ms
/// interval writes about 10 lines/s instead of one per commit (hundreds per
/// second, formatted and written on the commit path).
const COMMIT_LOG_EVERY_MS: u64 = 100;
/// Pipeline events buffered per `Admin/WatchEvents` stream before a
/// watcher that reads too slowly is cut off with DATA_LOSS (a replay
/// publishes one event per tid).
const WATCH_EVENTS_BUFFER: usize = 16_384;
/// The same for watchers without commits, whose events are rare (state
/// changes, hosts, checkpoints, recoveries). A broadcast channel allocates
/// its whole buffer up front: ~2 MiB at 16 384.
const WATCH_EVENTS_WITHOUT_COMMITS_BUFFER: usize = 1_024;

type Query = Box<dyn FnOnce(&Core) + Send>;

/// Commit latency histogram bounds: 4 buckets per doubling from 16 µs to
/// about 1 s, then one unbounded bucket.
fn latency_bounds_micros() -> Vec<u64> {
    let mut b = Vec::new();
    for e in 4..20u32 {
        for q in 0..4u64 {
            b.push((1u64 << e) + q * ((1u64 << e) / 4));
        }
    }
    b.push(u64::MAX);
    b
}

/// A latency histogram over [`latency_bounds_micros`].
struct Histogram {
    bounds: Vec<u64>,
    counts: Vec<u64>,
    total: u64,
    sum_micros: u64,
}

impl Histogram {
    fn new() -> Self {
        let bounds = latency_bounds_micros();
        let counts = vec![0; bounds.len()];
        Histogram { bounds, counts, total: 0, sum_micros: 0 }
    }

    fn observe(&mut self, micros: u64) {
        let last = self.counts.len() - 1;
        let i = self.bounds.partition_point(|b| *b < micros).min(last);
        self.counts[i] += 1;
        self.total += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }

    fn to_pb(&self) -> pb::LatencyHistogram {
        pb::LatencyHistogram {
            upper_micros: self.bounds.clone(),
            counts: self.counts.clone(),
            total: self.total,
            sum_micros: self.sum_micros,
        }
    }
}

/// A live tid between its first Prepare sent and its first Commit sent.
struct Committing {
    tid: u64,
    prepare_sent: Instant,
    /// When the core proposed its commit to the ledger: every host's
    /// Prepared was in.
    proposed: Option<Instant>,
}

/// A replay in progress, as the shell follows it (`ShellStats::replay`).
struct ReplayRun {
    started: Instant,
    /// The committed tids it replays, in ledger order: how many, the first
    /// and the last.
    expected: usize,
    first_tid: u64,
    last_tid: u64,
    /// Committed on every host so far, and their records.
    tids: u64,
    records: u64,
    /// When the log last said how far the replay is.
    logged: Instant,
}

/// How often a replay under way says in the log how far it has come.
const REPLAY_PROGRESS_LOG_EVERY: Duration = Duration::from_secs(10);

impl ReplayRun {
    fn progress(&self) -> pb::ReplayProgress {
        pb::ReplayProgress {
            first_tid: self.first_tid,
            last_tid: self.last_tid,
            tids: self.expected as u64,
            tids_done: self.tids,
            records: self.records,
            micros: self.started.elapsed().as_micros() as u64,
        }
    }
}

/// What the shell measures (not the core: it has no clocks). Shared with
/// Admin/GetStatus.
struct ShellStats {
    /// The replay in progress, from "recovering" on.
    replay: Option<ReplayRun>,
    last_replay: pb::ReplayStats,
    /// Live tids whose Prepare went out and whose Commit has not, oldest
    /// first (more than one with a commit pipeline).
    committing: std::collections::VecDeque<Committing>,
    /// Prepare sent -> Commit sent, and its two parts: the hosts'
    /// (Prepare sent -> commit proposed) and the ledger's (commit
    /// proposed -> Commit sent).
    commit: Histogram,
    prepare: Histogram,
    ledger: Histogram,
}

impl ShellStats {
    fn new() -> Self {
        ShellStats {
            replay: None,
            last_replay: pb::ReplayStats::default(),
            committing: Default::default(),
            commit: Histogram::new(),
            prepare: Histogram::new(),
            ledger: Histogram::new(),
        }
    }
}

type SharedStats = Arc<Mutex<ShellStats>>;

fn micros_between(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_micros() as u64
}

fn lock(stats: &SharedStats) -> std::sync::MutexGuard<'_, ShellStats> {
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

enum Msg {
    Event(Event),
    /// A proposal applied (`Event::Applied`), with the state machine's
    /// records of the tids it touched: the core's copy of the ledger takes
    /// them instead of keeping equal records of its own.
    Applied(Event, Vec<Arc<TxnRecord>>),
    /// A stream opened: register its command sender before its Hello.
    Open { conn: ConnId, tx: mpsc::Sender<CommandBatch> },
    Query(Query),
    /// Events from a host stream, in the order its reports came (one or
    /// more reports' worth: see the stream reader in `session`); each is
    /// dropped unless the stream is accepted when its turn comes.
    FromConn { conn: ConnId, events: Vec<Event> },
    /// The process is shutting down: stop deciding anything (host streams
    /// closing now are the shutdown, not a failure to recover from).
    Quiesce,
    /// The ledger refused or did not commit a write: this node can no longer
    /// act as leader. The driver stops deciding and tells the supervisor.
    LeadershipLost(String),
    /// This node no longer leads: close every host stream with `status`
    /// (UNAVAILABLE naming the leader) and end the driver.
    Stop(Status),
}

/// Cloneable handle for the gRPC services to reach the driver.
#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<Msg>,
    next_conn: Arc<AtomicU64>,
    stats: SharedStats,
    /// Set (once) when the driver found it can no longer lead.
    lost: watch::Receiver<Option<String>>,
    /// How this node names itself (Welcome, GetStatus).
    coordinator_id: Arc<str>,
    /// The driver's pipeline events (`Admin/WatchEvents`).
    events: WatchSenders,
}

/// The two feeds of `Admin/WatchEvents`: every event, and every event but
/// the per-tid commits. A watcher subscribes to the one it asked for, so
/// that while only watchers without commits listen (the replay benchmark,
/// an operator following state changes) the driver builds and sends no
/// event per committed tid, and no watcher wakes for one only to drop it.
#[derive(Clone)]
struct WatchSenders {
    all: broadcast::Sender<pb::PipelineEvent>,
    without_commits: broadcast::Sender<pb::PipelineEvent>,
}

impl WatchSenders {
    fn new() -> Self {
        WatchSenders {
            all: broadcast::channel(WATCH_EVENTS_BUFFER).0,
            without_commits: broadcast::channel(WATCH_EVENTS_WITHOUT_COMMITS_BUFFER).0,
        }
    }
}

impl DriverHandle {
    /// Stops the core from reacting to anything further and returns once
    /// the driver has done so (queries still work).
    pub async fn quiesce(&self) {
        if self.tx.send(Msg::Quiesce).await.is_ok() {
            // The channel is FIFO: once this query is answered, Quiesce was handled.
            let _ = self.query(|_| ()).await;
        }
    }

    /// Resolves when the driver finds it can no longer lead, with the reason.
    async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        let reason = match rx.wait_for(|l| l.is_some()).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the driver stopped".into(),
        };
        reason
    }

    /// Ends the driver: every host stream is closed with `status`.
    async fn stop(&self, status: Status) {
        let _ = self.tx.send(Msg::Stop(status)).await;
    }

    async fn event(&self, e: Event) -> Result<(), Status> {
        self.tx.send(Msg::Event(e)).await.map_err(|_| Status::unavailable("coordinator is shutting down"))
    }

    /// The driver's pipeline events from now on (`Admin/WatchEvents`). Ends
    /// with UNAVAILABLE when the driver ends (this node stopped leading or
    /// shuts down), and with DATA_LOSS if the reader falls more than
    /// `WATCH_EVENTS_BUFFER` events behind (without commits,
    /// `WATCH_EVENTS_WITHOUT_COMMITS_BUFFER`): an event is never skipped
    /// silently.
    fn watch(&self, without_commits: bool) -> impl Stream<Item = Result<pb::PipelineEvent, Status>> + Send + 'static {
        let rx = if without_commits { self.events.without_commits.subscribe() } else { self.events.all.subscribe() };
        let state = Some((rx, self.tx.clone()));
        futures::stream::unfold(state, move |state| async move {
            let (mut rx, driver) = state?;
            let item = tokio::select! {
                biased;
                r = rx.recv() => r,
                _ = driver.closed() => Err(broadcast::error::RecvError::Closed),
            };
            match item {
                Ok(event) => Some((Ok(event), Some((rx, driver)))),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(Status::data_loss(format!(
                        "this watcher fell {n} events behind and they are gone; read Admin/GetStatus and call WatchEvents again"
                    ))),
                    None,
                )),
                Err(broadcast::error::RecvError::Closed) => Some((
                    Err(Status::unavailable(
                        "this coordinator stopped driving the pipeline (no longer the leader, or shutting down); watch the leader",
                    )),
                    None,
                )),
            }
        })
    }

    /// Runs `f` against the core on the driver task and returns its result.
    pub async fn query<T: Send + 'static>(&self, f: impl FnOnce(&Core) -> T + Send + 'static) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Query(Box::new(move |core| {
                let _ = tx.send(f(core));
            })))
            .await
            .map_err(|_| Status::unavailable("coordinator is shutting down"))?;
        rx.await.map_err(|_| Status::unavailable("coordinator is shutting down"))
    }
}

struct Conn {
    tx: mpsc::Sender<CommandBatch>,
    host: Option<HostId>,
    next_seq: u64,
    /// Commands decided in this driver turn, not yet handed to the stream
    /// (`Driver::flush_commands`).
    outbox: CommandBatch,
}

impl Conn {
    /// Hands `outbox` plus a final `status` to the stream at once (the
    /// stream is being closed); a full or closed queue changes nothing.
    fn close_with(mut self, status: Status) {
        self.outbox.push(Err(status));
        let _ = self.tx.try_send(std::mem::take(&mut self.outbox));
    }
}

struct Driver {
    core: Core,
    conns: HashMap<ConnId, Conn>,
    host_conn: HashMap<HostId, ConnId>,
    propose_tx: mpsc::UnboundedSender<LedgerEntry>,
    coordinator_id: String,
    stats: SharedStats,
    /// Time of the event being handled, for events the shell itself raises.
    now_us: u64,
    /// Streams with commands in their `outbox`.
    dirty: Vec<ConnId>,
    /// When a commit was last logged at info level (in ms), and the
    /// live commits since, that line included.
    commit_log: (Option<u64>, u64),
    /// Pipeline events for `Admin/WatchEvents`, numbered from 1 per leader
    /// term (commits included, whether or not a watcher takes them);
    /// building one costs nothing while no watcher of its feed listens.
    events: WatchSenders,
    event_seq: u64,
    /// `--metrics-listen`'s view of this driver (`crate::metrics`).
    metrics: crate::metrics::DriverMetrics,
}

/// Starts the driver, the proposer and the ticker over the ledger as this
/// node has applied it. Returns the handle the gRPC services use. Called by
/// [`supervise`] once this node leads with the whole history applied.
async fn start_driver(cfg: CoreConfig, ledger: Ledger, coordinator_id: String, propose_timeout: Duration) -> anyhow::Result<DriverHandle> {
    let state = ledger.state().await;
    let (core, initial) = Core::new(cfg, state).map_err(anyhow::Error::msg)?;
    let id_for_status: Arc<str> = coordinator_id.as_str().into();
    let (tx, mut rx) = mpsc::channel::<Msg>(DRIVER_QUEUE_MAX);
    let (propose_tx, mut propose_rx) = mpsc::unbounded_channel::<LedgerEntry>();
    let (lost_tx, lost_rx) = watch::channel(None::<String>);

    // Proposer: entries are handed to raft in the order the core proposed
    // them, with at most PROPOSALS_IN_FLIGHT_MAX raft writes outstanding;
    // whatever the core proposes meanwhile queues up and goes as ONE raft
    // entry (`LedgerEntry::Batch`): one log write and one replication round
    // for all of it, which is what lets a commit pipeline commit several
    // tids per ledger round. (openraft 0.9 appended one raft entry at a time,
    // waiting for its fsync, so only fewer, larger entries raised the rate.)
    // A second task awaits the results in order and reports each ledger
    // entry on its own, so the core sees them in log order exactly as if
    // each had been a raft entry. A write this node cannot commit (deposed,
    // or no quorum within the timeout) is not a pipeline failure: it means
    // another node leads, or will, and that node recovers from the ledger.
    // Nothing after it is reported.
    type Pending =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Result<(), crate::ledger::LedgerError>>, ProposeError>> + Send>>;
    let (queued_tx, mut queued_rx) = mpsc::channel::<(Vec<LedgerEntry>, Pending)>(PROPOSALS_IN_FLIGHT_MAX);
    let proposer_ledger = ledger.clone();
    tokio::spawn(async move {
        while let Some(first) = propose_rx.recv().await {
            let mut entries = vec![first];
            while entries.len() < PROPOSAL_BATCH_MAX {
                match propose_rx.try_recv() {
                    Ok(e) => entries.push(e),
                    Err(_) => break,
                }
            }
            let raft_entry = if entries.len() == 1 { entries[0].clone() } else { LedgerEntry::Batch(entries.clone()) };
            let pending: Pending = match proposer_ledger.propose_queued(raft_entry).await {
                Ok(f) => Box::pin(f),
                Err(e) => Box::pin(async move { Err(e) }),
            };
            // Blocks while PROPOSALS_IN_FLIGHT_MAX writes are outstanding:
            // that is when the next batch fills up.
            if queued_tx.send((entries, pending)).await.is_err() {
                break;
            }
        }
    });
    let events = tx.clone();
    let results_ledger = ledger.clone();
    tokio::spawn(async move {
        'writes: while let Some((entries, pending)) = queued_rx.recv().await {
            let outcome = tokio::time::timeout(propose_timeout, pending).await;
            let what = || if entries.len() == 1 { format!("{:?}", entries[0]) } else { format!("a batch of {} entries", entries.len()) };
            let msgs: Vec<Msg> = match outcome {
                Ok(Ok(verdicts)) if verdicts.len() == entries.len() => entries
                    .into_iter()
                    .zip(verdicts)
                    .map(|(entry, result)| {
                        let records = results_ledger.with_state(|l| {
                            entry_tids(&entry).filter_map(|t| l.txns.get(&t).cloned()).collect::<Vec<_>>()
                        });
                        Msg::Applied(Event::Applied { entry, result }, records)
                    })
                    .collect(),
                Ok(Ok(verdicts)) => {
                    let error = format!("the ledger returned {} verdicts for {} entries", verdicts.len(), entries.len());
                    entries.into_iter().map(|entry| Msg::Event(Event::ProposeFailed { entry, error: error.clone() })).collect()
                }
                Ok(Err(ProposeError::Shutdown)) => break,
                Ok(Err(e @ (ProposeError::NotLeader { .. } | ProposeError::NoQuorum(_)))) => {
                    vec![Msg::LeadershipLost(format!("the ledger did not take {}: {e}", what()))]
                }
                Ok(Err(e)) => entries.into_iter().map(|entry| Msg::Event(Event::ProposeFailed { entry, error: e.to_string() })).collect(),
                Err(_) => vec![Msg::LeadershipLost(format!(
                    "a ledger write ({}) did not commit within {propose_timeout:?}: this node cannot reach a quorum of the \
                     coordinator group",
                    what()
                ))],
            };
            for msg in msgs {
                let last = matches!(msg, Msg::LeadershipLost(_));
                if events.send(msg).await.is_err() || last {
                    break 'writes;
                }
            }
        }
    });

    // Report deadlines are checked every TICK_MS; commits are due at exact
    // times (`Core::commit_due_us`, in the driver loop below).
    let tick_ms = TICK_MS;
    let ticks = tx.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(tick_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if ticks.send(Msg::Event(Event::Tick)).await.is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let stats: SharedStats = Arc::new(Mutex::new(ShellStats::new()));
    let events_tx = WatchSenders::new();
    let metrics = crate::metrics::DriverMetrics::new(&core);
    let mut driver =
        Driver {
        core,
        conns: HashMap::new(),
        host_conn: HashMap::new(),
        propose_tx,
        coordinator_id,
        stats: stats.clone(),
        now_us: 0,
        dirty: Vec::new(),
        commit_log: (None, 0),
        events: events_tx.clone(),
        event_seq: 0,
        metrics,
    };
    driver.execute(initial);
    driver.flush_commands();
    tokio::spawn(
        async move {
            let mut quiesced = false;
            // Commits fall due at exact times: with tokio's 1 ms timer a
            // 1 ms commit interval took 1-2 ms.
            let mut commit_timer = crate::deadline::DeadlineTimer::new();
            if !commit_timer.is_precise() {
                warn!("no timerfd: commit deadlines may be up to 1 ms late");
            }
            loop {
                // The periodic tick checks report deadlines; the open
                // transaction's commit is due at an exact time, so wake for
                // it then instead of up to a tick late.
                let due = driver.core.commit_due_us().filter(|_| !quiesced);
                let msg = tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(msg) => msg,
                        None => break,
                    },
                    _ = commit_timer.sleep_until(started + Duration::from_micros(due.unwrap_or(0))), if due.is_some() => {
                        Msg::Event(Event::Tick)
                    }
                };
                let now_us = started.elapsed().as_micros() as u64;
                driver.now_us = now_us;
                if quiesced && !matches!(msg, Msg::Query(_) | Msg::Stop(_)) {
                    continue;
                }
                match msg {
                    Msg::LeadershipLost(reason) => {
                        quiesced = true;
                        warn!(epoch = driver.core.epoch(), %reason, "this coordinator can no longer lead; it stops driving the pipeline");
                        let _ = lost_tx.send(Some(reason));
                    }
                    Msg::Stop(status) => {
                        for (conn, c) in driver.conns.drain() {
                            // A stream its host already closed (a quiesced
                            // core keeps it) is not reported as closed here.
                            if c.host.is_some() && !c.tx.is_closed() {
                                info!(conn, host = c.host.as_deref().unwrap_or(""), "closing host stream: {}", status.message());
                            }
                            c.close_with(status.clone());
                        }
                        break;
                    }
                    Msg::Quiesce => {
                        quiesced = true;
                        info!(
                            epoch = driver.core.epoch(),
                            "coordinator shutting down; an open transaction stays open in the ledger and is recovered on the next start"
                        );
                    }
                    Msg::Event(e) => {
                        let actions = driver.core.handle(now_us, e);
                        driver.execute(actions);
                    }
                    Msg::Applied(e, records) => {
                        let actions = driver.core.handle(now_us, e);
                        driver.core.share_records(records);
                        driver.execute(actions);
                    }
                    Msg::Open { conn, tx } => {
                        driver.conns.insert(conn, Conn { tx, host: None, next_seq: 1, outbox: Vec::new() });
                    }
                    Msg::Query(f) => f(&driver.core),
                    Msg::FromConn { conn, events } => {
                        // One event at a time, as if each had come alone: an
                        // event may drop this stream, and what follows it
                        // on the stream then counts for nothing.
                        for event in events {
                            let accepted = driver.conns.get(&conn).is_some_and(|c| c.host.is_some());
                            if accepted || matches!(event, Event::Disconnected { .. }) {
                                let actions = driver.core.handle(now_us, event);
                                driver.execute(actions);
                            }
                        }
                    }
                }
                // Whatever this turn decided for each stream goes out as
                // one message: one wake-up of its writer, one write.
                driver.flush_commands();
            }
        }
        .instrument(info_span!("driver")),
    );
    Ok(DriverHandle { tx, next_conn: Arc::new(AtomicU64::new(1)), stats, lost: lost_rx, coordinator_id: id_for_status, events: events_tx })
}

/// The tids whose ledger records `entry` creates or changes.
fn entry_tids(entry: &LedgerEntry) -> impl Iterator<Item = u64> {
    let (a, b) = match entry {
        LedgerEntry::Begin { tid } | LedgerEntry::Fail { tid, .. } | LedgerEntry::Reopen { tid } => (Some(*tid), None),
        LedgerEntry::Commit { tid, begin_next, .. } => (Some(*tid), *begin_next),
        LedgerEntry::Init { .. }
        | LedgerEntry::NewEpoch { .. }
        | LedgerEntry::CheckpointComplete { .. }
        | LedgerEntry::Batch(_) => (None, None),
    };
    a.into_iter().chain(b)
}

/// What [`supervise`] needs besides the ledger.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    pub core: CoreConfig,
    /// How this node names itself to hosts (Welcome) and operators.
    pub coordinator_id: String,
    /// Bound on one ledger write, on a new leader applying the history, and
    /// on confirming leadership with a quorum. A leader that cannot commit
    /// within it steps away from the pipeline.
    pub propose_timeout: Duration,
}

/// The driver of this node while it leads (`None` on a follower, and on a
/// new leader until it has applied the history). Shared with the services.
pub type Leading = watch::Receiver<Option<DriverHandle>>;

/// Runs a driver whenever this node leads the ledger group (see the module
/// docs). Returns the watch the services read, and the supervisor task,
/// which ends when `quiesce` is set (the driver is then quiesced and stays
/// available for queries) or fails if a driver cannot start (e.g. the
/// ledger belongs to another cluster).
pub fn supervise(
    cfg: SupervisorConfig,
    ledger: Ledger,
    mut quiesce: watch::Receiver<bool>,
) -> (Leading, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let (leading_tx, leading_rx) = watch::channel(None::<DriverHandle>);
    let task = tokio::spawn(
        async move {
            let me = ledger.node_id();
            let mut lead = ledger.subscribe_leadership();
            crate::metrics::set_leader(false);
            loop {
                if *quiesce.borrow_and_update() {
                    return Ok(());
                }
                let seen = *lead.borrow_and_update();
                if seen.leader != Some(me) {
                    tokio::select! {
                        r = lead.changed() => if r.is_err() { return Ok(()) },
                        _ = quiesce.changed() => {}
                    }
                    continue;
                }
                // Leader: trust the ledger only once every entry of earlier
                // terms is applied, and only with a quorum behind us.
                let ready = async {
                    let term = tokio::time::timeout(cfg.propose_timeout, ledger.wait_applied_leader())
                        .await
                        .map_err(|_| ProposeError::NoQuorum(format!(
                            "elected, but the ledger history was not committed within {:?}",
                            cfg.propose_timeout
                        )))??;
                    ledger.confirm_leader(cfg.propose_timeout).await?;
                    Ok::<u64, ProposeError>(term)
                };
                // A SIGTERM during this wait (up to two propose timeouts
                // with no quorum) stops the daemon now, not after it.
                let ready = tokio::select! {
                    r = ready => r,
                    _ = async { let _ = quiesce.wait_for(|q| *q).await; } => return Ok(()),
                };
                let term = match ready {
                    Ok(term) if term == seen.term => term,
                    Ok(_) => continue, // another election happened meanwhile
                    Err(ProposeError::Shutdown) => return Ok(()),
                    Err(e) => {
                        warn!(term = seen.term, "not taking over the pipeline yet: {e}");
                        // Try again on the next leadership change, or after a
                        // while if nothing changes (a leader regaining its quorum).
                        tokio::select! {
                            _ = lead.changed() => {}
                            _ = tokio::time::sleep(cfg.propose_timeout) => {}
                            _ = quiesce.changed() => {}
                        }
                        continue;
                    }
                };
                let handle = start_driver(cfg.core.clone(), ledger.clone(), cfg.coordinator_id.clone(), cfg.propose_timeout).await?;
                let _ = leading_tx.send(Some(handle.clone()));
                crate::metrics::set_leader(true);
                info!(term, node = me, "this node leads the coordinator group and drives the pipeline");
                let why = tokio::select! {
                    why = async {
                        loop {
                            if lead.changed().await.is_err() {
                                return "the raft node stopped".to_string();
                            }
                            let now = *lead.borrow_and_update();
                            if now.term != term || now.leader != Some(me) {
                                return match now.leader {
                                    Some(l) if l != me => format!("node {l} leads term {}", now.term),
                                    _ => format!("an election started (term {})", now.term),
                                };
                            }
                        }
                    } => why,
                    why = handle.lost() => why,
                    _ = async { let _ = quiesce.wait_for(|q| *q).await; } => {
                        handle.quiesce().await;
                        return Ok(());
                    }
                };
                // Stopping: the server's shutdown may end the driver before
                // this loop sees the quiesce; that is no loss of leadership.
                if *quiesce.borrow() {
                    return Ok(());
                }
                let _ = leading_tx.send(None);
                crate::metrics::set_leader(false);
                handle.stop(not_leader_status("the host session", &ledger)).await;
                warn!(term, node = me, %why, "this node no longer leads: it stopped driving the pipeline and sent the hosts away");
            }
        }
        .instrument(info_span!("supervisor")),
    );
    (leading_rx, task)
}

impl Driver {
    /// The one place where the core's decisions become I/O.
    ///
    /// Commands are numbered here and queued in their stream's `outbox`;
    /// `flush_commands` hands them over at the end of the driver's turn.
    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { host, epoch, cmd } => {
                    self.time_commit(&cmd);
                    let stream = self.host_conn.get(&host).copied().and_then(|id| Some((id, self.conns.get_mut(&id)?)));
                    let Some((id, conn)) = stream else {
                        // The core only addresses connected hosts; a stream
                        // that just died is reported to it as Disconnected.
                        warn!(%host, ?cmd, "command for a host without a stream dropped");
                        continue;
                    };
                    let seq = conn.next_seq;
                    conn.next_seq += 1;
                    if conn.outbox.is_empty() {
                        self.dirty.push(id);
                    }
                    conn.outbox.push(Ok(wire::command_to(seq, epoch, &cmd)));
                }
                Action::Accept { conn, host } => {
                    if let Some(old) = self.host_conn.insert(host.clone(), conn) {
                        if old != conn {
                            self.conns.remove(&old);
                        }
                    }
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.host = Some(host.clone());
                        let seq = c.next_seq;
                        c.next_seq += 1;
                        let welcome = pb::Command {
                            seq,
                            epoch: self.core.epoch(),
                            command: Some(pb::command::Command::Welcome(pb::Welcome {
                                coordinator_id: self.coordinator_id.clone(),
                            })),
                        };
                        if c.outbox.is_empty() {
                            self.dirty.push(conn);
                        }
                        c.outbox.push(Ok(welcome));
                    }
                    info!(%host, conn, "host joined");
                }
                Action::Reject { conn, error } => {
                    warn!(conn, %error, "host stream rejected");
                    if let Some(c) = self.conns.remove(&conn) {
                        c.close_with(Status::failed_precondition(error));
                    }
                }
                Action::Drop { conn, host, why } => {
                    warn!(%host, conn, %why, "dropping host stream");
                    if let Some(c) = self.conns.remove(&conn) {
                        c.close_with(Status::aborted(format!("coordinator dropped this stream: {why}")));
                    }
                    if self.host_conn.get(&host) == Some(&conn) {
                        self.host_conn.remove(&host);
                    }
                }
                Action::Propose(entry) => {
                    self.time_commit_proposed(&entry);
                    if self.propose_tx.send(entry).is_err() {
                        error!("ledger proposer stopped");
                    }
                }
                Action::Notice(n) => self.notice(n),
            }
        }
    }

    /// Hands each stream the commands queued for it in this turn, as one
    /// message (one wake-up of its writer instead of one per command). A
    /// stream whose queue is full or closed is closed (dropping its sender
    /// ends it: a command is never dropped silently) and reported to the
    /// core as lost, fail closed; what the core decides then is flushed too.
    fn flush_commands(&mut self) {
        while !self.dirty.is_empty() {
            let mut lost: Vec<(ConnId, HostId)> = Vec::new();
            for id in std::mem::take(&mut self.dirty) {
                let Some(conn) = self.conns.get_mut(&id) else { continue };
                if conn.outbox.is_empty() {
                    continue;
                }
                let batch = std::mem::take(&mut conn.outbox);
                if conn.tx.try_send(batch).is_err() {
                    let host = conn.host.clone();
                    warn!(host = host.as_deref().unwrap_or(""), conn = id, "host command queue full or closed; closing the stream");
                    self.conns.remove(&id);
                    if let Some(host) = host.filter(|h| self.host_conn.get(h) == Some(&id)) {
                        self.host_conn.remove(&host);
                        lost.push((id, host));
                    }
                }
            }
            for (conn, host) in lost {
                let reason = "its command queue overflowed or closed".to_string();
                let actions = self.core.handle(self.now_us, Event::Disconnected { conn, host, reason });
                self.execute(actions);
            }
        }
    }

    /// Live commit latency: from the first Prepare{T} sent to the first
    /// Commit{T} sent (a broadcast is one action per host, microseconds
    /// apart). Replayed tids carry their prepare in Start and are not timed.
    fn time_commit(&self, cmd: &Cmd) {
        match cmd {
            Cmd::Prepare { tid, .. } => {
                let mut st = lock(&self.stats);
                if st.committing.back().is_none_or(|c| c.tid < *tid) {
                    st.committing.push_back(Committing { tid: *tid, prepare_sent: Instant::now(), proposed: None });
                }
            }
            Cmd::Commit { tid, .. } => {
                let mut st = lock(&self.stats);
                // Older entries belong to tids abandoned by a recovery.
                while st.committing.front().is_some_and(|c| c.tid < *tid) {
                    st.committing.pop_front();
                }
                if st.committing.front().is_some_and(|c| c.tid == *tid) {
                    let c = st.committing.pop_front().expect("checked");
                    let now = Instant::now();
                    let whole = micros_between(c.prepare_sent, now);
                    let parts = c.proposed.map(|proposed| (micros_between(c.prepare_sent, proposed), micros_between(proposed, now)));
                    st.commit.observe(whole);
                    if let Some((prepare, ledger)) = parts {
                        st.prepare.observe(prepare);
                        st.ledger.observe(ledger);
                    }
                    self.metrics.commit_timed(whole, parts);
                }
            }
            _ => {}
        }
    }

    /// The split point of a live tid's commit latency: its commit proposed
    /// to the ledger (`time_commit`).
    fn time_commit_proposed(&self, entry: &LedgerEntry) {
        if let LedgerEntry::Commit { tid, .. } = entry {
            let mut st = lock(&self.stats);
            if let Some(c) = st.committing.iter_mut().find(|c| c.tid == *tid) {
                c.proposed.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Replay timing: from the Recovering notice (every host restored) to
    /// the commit of the last replayed committed tid.
    fn time_replay(&self, n: &Notice) -> Option<pb::ReplayStats> {
        let mut st = lock(&self.stats);
        match n {
            Notice::Recovering { replay_tids, .. } => {
                st.committing.clear();
                let now = Instant::now();
                st.replay = Some(ReplayRun {
                    started: now,
                    logged: now,
                    expected: replay_tids.len(),
                    first_tid: replay_tids.first().copied().unwrap_or(0),
                    last_tid: replay_tids.last().copied().unwrap_or(0),
                    tids: 0,
                    records: 0,
                });
            }
            Notice::Committed { replayed: true, records, .. } => {
                if let Some(run) = st.replay.as_mut() {
                    run.tids += 1;
                    run.records += records;
                    // A long replay says now and then where it is (a clock
                    // read every 64 tids, not per tid).
                    if run.tids % 64 == 0 && run.logged.elapsed() >= REPLAY_PROGRESS_LOG_EVERY && (run.tids as usize) < run.expected {
                        run.logged = Instant::now();
                        let secs = run.started.elapsed().as_secs_f64();
                        info!(
                            tids_done = run.tids,
                            tids = run.expected,
                            records = run.records,
                            "replaying: {} of {} committed tids done ({}..={}) in {secs:.0} s",
                            run.tids,
                            run.expected,
                            run.first_tid,
                            run.last_tid
                        );
                    }
                }
            }
            // A replay cut short. (GetStatus shows a replay only while the
            // core replays, so one ended otherwise, e.g. by an operator's
            // Stop, shows no more; the next Recovering replaces it.)
            Notice::Failed(_) | Notice::HostLost { .. } => st.replay = None,
            _ => {}
        }
        if let Some(run) = &st.replay {
            if run.tids as usize >= run.expected {
                let (tids, records, micros) = (run.tids, run.records, run.started.elapsed().as_micros() as u64);
                st.replay = None;
                st.last_replay = pb::ReplayStats { tids, records, micros };
                let per_s = if micros == 0 { 0.0 } else { records as f64 * 1e6 / micros as f64 };
                info!(tids, records, micros, records_per_s = per_s as u64, "replay done");
                return Some(st.last_replay);
            }
        }
        None
    }

    /// Numbers `event` (a commit or not: `commit`) and hands it to the
    /// `Admin/WatchEvents` feeds that take it (`WatchSenders`). Built only
    /// while a watcher of such a feed listens: a replay's thousands of
    /// commits cost nothing more otherwise.
    fn publish(&mut self, epoch: u64, commit: bool, event: impl FnOnce() -> pb::pipeline_event::Event) {
        self.event_seq += 1;
        let to_all = self.events.all.receiver_count() > 0;
        let to_others = !commit && self.events.without_commits.receiver_count() > 0;
        if !to_all && !to_others {
            return;
        }
        let event = pb::PipelineEvent { seq: self.event_seq, epoch, event: Some(event()) };
        // A send fails only when every watcher of that feed went away
        // meanwhile.
        if to_others {
            let _ = self.events.without_commits.send(event.clone());
        }
        if to_all {
            let _ = self.events.all.send(event);
        }
    }

    /// A core notice as the `Admin/WatchEvents` event it is.
    fn watch_event(n: &Notice) -> pb::pipeline_event::Event {
        use pb::pipeline_event::Event as E;
        match n {
            Notice::PipelineState { from, to, why } => E::State(pb::PipelineStateChanged { from: from.clone(), to: to.clone(), why: why.clone() }),
            Notice::HostJoined { host } => E::HostJoined(pb::HostJoined { host_id: host.clone() }),
            Notice::HostLost { host, why } => E::HostLost(pb::HostLost { host_id: host.clone(), why: why.clone() }),
            Notice::Committed { tid, replayed, records } => E::Committed(pb::TidCommitted { tid: *tid, replayed: *replayed, records: *records }),
            Notice::CheckpointComplete { tid } => E::CheckpointComplete(pb::CheckpointCompleted { tid: *tid }),
            Notice::Recovering { checkpoint, replay_tids, open_tid, .. } => E::Recovering(pb::RecoveryStarted {
                checkpoint: *checkpoint,
                tids: replay_tids.len() as u64,
                first_tid: replay_tids.first().copied().unwrap_or(0),
                last_tid: replay_tids.last().copied().unwrap_or(0),
                open_tid: open_tid.unwrap_or(0),
            }),
            Notice::Recovery(r) => E::Recovery(pb::Recovery { path: r.path.as_str().into(), why: r.why.clone(), epoch: r.epoch }),
            Notice::Failed(d) => E::Failed(wire::failure_to(Some(d))),
        }
    }

    fn notice(&mut self, n: Notice) {
        let replay_done = self.time_replay(&n);
        self.metrics.on_notice(&n, &self.core);
        if let Some(stats) = &replay_done {
            self.metrics.replay_done(stats.tids, stats.micros);
        }
        let epoch = self.core.epoch();
        self.publish(epoch, matches!(n, Notice::Committed { .. }), || Self::watch_event(&n));
        if let Some(stats) = replay_done {
            self.publish(epoch, false, || pb::pipeline_event::Event::ReplayDone(stats));
        }
        match n {
            Notice::PipelineState { from, to, why } => info!(epoch, %from, %to, %why, "pipeline state"),
            Notice::HostJoined { host } => info!(epoch, %host, "host said hello"),
            Notice::HostLost { host, why } => warn!(epoch, %host, %why, "host lost; the open transaction will not commit"),
            // A replay of thousands of tids would flood the log; it is
            // summarised by "recovering" and "replay done" at info level.
            Notice::Committed { tid, replayed: true, records } => {
                tracing::debug!(epoch, tid, records, "replayed tid committed on every host")
            }
            Notice::Committed { tid, replayed: false, records } => {
                let now = self.now_us / 1000;
                let (last, since) = &mut self.commit_log;
                *since += 1;
                if last.is_some_and(|at| now.saturating_sub(at) < COMMIT_LOG_EVERY_MS) {
                    tracing::debug!(epoch, tid, records, "committed");
                } else {
                    if *since == 1 {
                        info!(epoch, tid, records, "committed");
                    } else {
                        info!(epoch, tid, records, tids = *since, "committed ({} tids since the last such line)", *since);
                    }
                    (*last, *since) = (Some(now), 0);
                }
            }
            Notice::CheckpointComplete { tid } => info!(epoch, tid, "checkpoint complete on every host"),
            Notice::Recovering { epoch, checkpoint, replay_tids, open_tid } => info!(
                epoch,
                checkpoint,
                replay = replay_tids.len(),
                first = replay_tids.first().copied().unwrap_or(0),
                last = replay_tids.last().copied().unwrap_or(0),
                open_tid = open_tid.unwrap_or(0),
                "recovering: restore checkpoint, replay committed tids, then continue"
            ),
            Notice::Recovery(r) => info!(epoch = r.epoch, path = r.path.as_str(), why = %r.why, "recovery path: {}", r.path.as_str()),
            Notice::Failed(d) => error!(
                epoch,
                host = d.host.as_deref().unwrap_or(""),
                tid = d.tid.unwrap_or(0),
                step = d.step.unwrap_or(0),
                endpoint = d.endpoint.as_deref().unwrap_or(""),
                "PIPELINE FAILED: {d}"
            ),
        }
    }
}

// ------------------------------------------------------------- HostSession

pub struct HostSessionService {
    leading: Leading,
    ledger: Ledger,
    /// `--tls-host-name`: the name each host's certificate must carry.
    host_names: Option<lockstep_host_agent::tls::HostNames>,
}

/// How long a host session waits on a node that does not know a ready
/// leader yet (an election in progress) before being turned away. Shorter
/// than the host's own wait for an answer (`CONNECT_TIMEOUT_MS`), so that
/// the host hears why it was turned away ("not the leader", naming one
/// if known) instead of giving up on a silent coordinator.
const HOST_SESSION_LEADER_WAIT: Duration = Duration::from_millis(lockstep_host_agent::runtime::CONNECT_TIMEOUT_MS * 3 / 4);

impl HostSessionService {
    /// The driver to attach a host to. During an election a node knows no
    /// leader; rather than send the host into backoff (and have it arrive
    /// late), the session waits, bounded, until a leader is known: then it
    /// is served here or redirected there at once.
    async fn await_driver(&self) -> Result<DriverHandle, Status> {
        let mut leading = self.leading.clone();
        let mut leadership = self.ledger.subscribe_leadership();
        let me = self.ledger.node_id();
        let deadline = tokio::time::Instant::now() + HOST_SESSION_LEADER_WAIT;
        // Re-checked at least this often: a leader that dies is no longer
        // "live" once it misses its heartbeats, without any watch firing.
        let recheck = Duration::from_millis(20);
        loop {
            leadership.borrow_and_update();
            let live_elsewhere = self.ledger.live_leader().is_some_and(|(l, _)| l != me);
            match leading_driver(&leading, &self.ledger, "a host session") {
                Ok(d) => return Ok(d),
                Err(status) if live_elsewhere || tokio::time::Instant::now() >= deadline => return Err(status),
                Err(_) => {}
            }
            let watching = tokio::select! {
                r = leading.changed() => r.is_ok(),
                r = leadership.changed() => r.is_ok(),
                _ = tokio::time::sleep(recheck) => true,
            };
            if !watching {
                return Err(Status::unavailable("this coordinator is shutting down"));
            }
        }
    }
}

/// The driver if this node leads and is ready; otherwise the UNAVAILABLE a
/// client should act on (go to the leader, or retry shortly).
fn leading_driver(leading: &Leading, ledger: &Ledger, what: &str) -> Result<DriverHandle, Status> {
    if let Some(d) = leading.borrow().clone() {
        return Ok(d);
    }
    let me = ledger.node_id();
    match ledger.live_leader() {
        Some((id, _)) if id == me => Err(Status::unavailable(format!(
            "this coordinator was just elected leader and is catching up with the ledger; retry {what} shortly"
        ))),
        _ => Err(not_leader_status(what, ledger)),
    }
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<pb::Command, Status>> + Send>>;

#[tonic::async_trait]
impl pb::host_session_server::HostSession for HostSessionService {
    type SessionStream = CommandStream;

    async fn session(&self, request: Request<Streaming<pb::HostReport>>) -> Result<Response<CommandStream>, Status> {
        let peer = request.remote_addr();
        // Kept only when a host's name is checked against it below.
        let certs = self.host_names.as_ref().and_then(|_| request.peer_certs());
        let mut reports = request.into_inner();
        let first = match reports.next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Err(e),
            None => return Err(Status::invalid_argument("stream closed before Hello")),
        };
        let hello = match (first.seq, first.report) {
            (1, Some(pb::host_report::Report::Hello(h))) => h,
            (seq, _) => {
                return Err(Status::invalid_argument(format!(
                    "the first report of a session must be Hello with seq 1 (got seq {seq}); is this a Lockstep host agent?"
                )))
            }
        };
        if let Some(names) = &self.host_names {
            if let Err(why) = names.check(&hello.host_id, certs.as_deref().map(|c| c.as_slice())) {
                warn!(host = %hello.host_id, ?peer, "host session refused: {why}");
                return Err(Status::permission_denied(why));
            }
        }
        // Journal summaries that match the ledger's records share them.
        let host_id = hello.host_id.clone();
        let hello = self
            .ledger
            .with_state(|l| wire::hello_from(hello, |tid| l.txn(tid)?.hosts.get(&host_id).map(|r| &r.aggregate)))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let host = hello.host_id.clone();
        let driver = self.await_driver().await?;
        let conn = driver.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(HOST_COMMANDS_QUEUE_MAX);
        driver.tx.send(Msg::Open { conn, tx }).await.map_err(|_| Status::unavailable("shutting down"))?;
        driver.event(Event::Hello { conn, hello }).await?;
        info!(%host, conn, ?peer, "host stream opened");

        tokio::spawn(
            async move {
                let mut expected_seq = 2;
                let mut clean = false;
                // When the last burst of reports arrived: a stream that ends
                // after a silence was closed by this server's HTTP/2
                // keepalive, not by the host.
                let mut heard = Instant::now();
                let silent = |heard: Instant| Some(heard.elapsed()).filter(|s| *s >= STREAM_SILENT_END);
                let mut events: Vec<Event> = Vec::new();
                let reason = 'stream: loop {
                    // Wait for one report, then take every report already
                    // received (up to a bound) without waiting: they go to
                    // the driver as one message, so the driver wakes once
                    // per burst, not once per report. Order is kept.
                    let mut next = reports.next().await;
                    if matches!(next, Some(Ok(_))) {
                        heard = Instant::now();
                    }
                    let mut taken = 0;
                    let end = loop {
                        match next {
                            // The keepalive ends a stream that carries nothing
                            // (the host froze, or the network to it failed) the
                            // same way the host's own close does.
                            None if let Some(silence) = silent(heard) => {
                                break Some(format!(
                                    "connection dropped after {} ms without a report or heartbeat from the host: it is \
                                     frozen or hung, or the network to it failed (its HTTP/2 pings went unanswered)",
                                    silence.as_millis()
                                ));
                            }
                            None => {
                                // The host ended its stream itself (e.g. a graceful shutdown).
                                clean = true;
                                break Some("stream closed by the host".to_string());
                            }
                            Some(Err(e)) => break Some(format!("stream error: {e}")),
                            Some(Ok(r)) => {
                                if r.seq != expected_seq {
                                    break Some(format!(
                                        "report sequence gap: expected #{expected_seq}, got #{} (a report was lost)",
                                        r.seq
                                    ));
                                }
                                expected_seq += 1;
                                if let Err(e) = wire::report_to_events(&host, r, &mut events) {
                                    break Some(format!("malformed report: {e}"));
                                }
                            }
                        }
                        taken += 1;
                        if taken >= REPORTS_FORWARDED_MAX {
                            break None;
                        }
                        match reports.next().now_or_never() {
                            Some(n) => next = n,
                            None => break None,
                        }
                    };
                    // What arrived before an error or the end still counts.
                    if !events.is_empty() {
                        let batch = std::mem::take(&mut events);
                        if driver.tx.send(Msg::FromConn { conn, events: batch }).await.is_err() {
                            return;
                        }
                    }
                    if let Some(reason) = end {
                        break 'stream reason;
                    }
                };
                if clean {
                    info!(%host, conn, %reason, "host stream ended");
                } else {
                    warn!(%host, conn, %reason, "host stream ended");
                }
                let events = vec![Event::Disconnected { conn, host, reason }];
                let _ = driver.tx.send(Msg::FromConn { conn, events }).await;
            }
            .instrument(info_span!("host_stream", conn)),
        );
        let commands = futures::StreamExt::flat_map(ReceiverStream::new(rx), futures::stream::iter);
        Ok(Response::new(Box::pin(commands)))
    }
}

// ------------------------------------------------------------------- Admin

pub struct AdminService {
    leading: Leading,
    ledger: Ledger,
    /// `--tls-admin-name`: who may change the cluster.
    admin_name: Option<lockstep_host_agent::tls::AdminName>,
}

impl AdminService {
    /// `PERMISSION_DENIED` for a call that changes the cluster (`what`)
    /// unless, with `--tls-admin-name`, the caller's certificate is valid
    /// for that name. Checked before anything else, on followers too.
    fn authorize<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        let Some(name) = &self.admin_name else { return Ok(()) };
        let certs = request.peer_certs();
        lockstep_host_agent::tls::check_name("the caller", &name.0, certs.as_deref().map(|c| c.as_slice())).map_err(|why| {
            warn!(peer = ?request.remote_addr(), "Admin/{what} refused: {why}");
            Status::permission_denied(format!(
                "Admin/{what} changes the cluster and takes a certificate valid for {} (--tls-admin-name): {why}",
                name.0
            ))
        })
    }

    fn driver(&self, what: &str) -> Result<DriverHandle, Status> {
        leading_driver(&self.leading, &self.ledger, what)
    }

    /// For reads a follower answers from its ledger copy: the driver if
    /// this node leads, else `None`.
    fn driver_if_leading(&self) -> Option<DriverHandle> {
        self.leading.borrow().clone()
    }
}

/// Marks a reply as coming from a follower's copy of the ledger.
fn stale<T>(mut r: Response<T>) -> Response<T> {
    mark_stale(r.metadata_mut());
    r
}

/// Marks a refusal as coming from a follower's copy of the ledger, which
/// may lag (a tid the leader has just begun is "not begun" there), and says
/// so in its message. Its details and metadata travel on unchanged.
fn stale_refusal(e: Status) -> Status {
    let message = format!("{} (answered by a follower from its copy of the ledger, which may lag the leader's)", e.message());
    let mut metadata = e.metadata().clone();
    mark_stale(&mut metadata);
    Status::with_details_and_metadata(e.code(), message, e.details().to_vec().into(), metadata)
}

fn mark_stale(m: &mut tonic::metadata::MetadataMap) {
    m.insert(lockstep_proto::STALE_METADATA_KEY, tonic::metadata::MetadataValue::from_static("true"));
}

fn host_statuses(core: &Core) -> Vec<pb::HostStatus> {
    core.hosts()
        .iter()
        .map(|(h, s)| pb::HostStatus {
            host_id: h.clone(),
            connected: s.conn.is_some(),
            state: if s.conn.is_none() {
                "Disconnected".into()
            } else if s.txn.prepared.is_some() {
                "Prepared".into()
            } else {
                core.phase().name().into()
            },
            last_step: s.last_step,
            last_committed_tid: s.last_committed,
            ingest_addr: s.hello.as_ref().map(|h| h.ingest_addr.clone()).unwrap_or_default(),
            last_lost: s.last_lost.clone().unwrap_or_default(),
        })
        .collect()
}

/// `GetTransaction`'s answer from `l`: the record of `tid`, or why there
/// is none, so an operator can tell a typo from history that was pruned.
fn find_txn(l: &crate::ledger::LedgerState, tid: crate::ledger::Tid) -> Result<pb::Transaction, Status> {
    if let Some(t) = l.txn(tid) {
        return Ok(txn_to(t));
    }
    if tid == 0 {
        return Err(Status::invalid_argument("tid 0 names no transaction; tids start at 1"));
    }
    if tid > l.tid_high_water {
        return Err(Status::not_found(format!(
            "tid {tid} has not begun; the highest tid issued is {}",
            l.tid_high_water
        )));
    }
    let why = match l.txns.keys().next() {
        Some(&oldest) if tid < oldest => format!(
            "tid {tid} is older than the oldest tid the ledger keeps ({oldest}); records before a checkpoint are pruned"
        ),
        _ => format!("the ledger holds no record of tid {tid}"),
    };
    Err(Status::not_found(format!("{why}; use ListTransactions to see what is kept")))
}

fn txn_to(t: &crate::ledger::TxnRecord) -> pb::Transaction {
    pb::Transaction {
        tid: t.tid,
        state: format!("{:?}", t.status),
        epoch: t.epoch,
        hosts: t
            .hosts
            .iter()
            .map(|(h, r)| pb::HostRecord {
                host_id: h.to_owned(),
                steps: r.steps,
                aggregate: wire::aggregate_to(&r.aggregate()),
                output_digest: r.output_digest,
            })
            .collect(),
        failure: t.failure.clone().unwrap_or_default(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::PipelineEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    type WatchEventsStream = EventStream;

    async fn watch_events(&self, request: Request<pb::WatchEventsRequest>) -> Result<Response<EventStream>, Status> {
        let without_commits = request.into_inner().without_commits;
        let driver = self.driver("WatchEvents")?;
        Ok(Response::new(Box::pin(driver.watch(without_commits))))
    }

    async fn get_status(&self, _: Request<pb::GetStatusRequest>) -> Result<Response<pb::Status>, Status> {
        let node_id = self.ledger.node_id();
        let (leader_id, leader_addr) = self.ledger.leader().unwrap_or_default();
        let raft_term = self.ledger.subscribe_leadership().borrow().term;
        let driver = self.driver_if_leading();
        // Leading means driving the pipeline, as `lockstep_leader` says: a
        // leader cut off from its quorum stops driving once a ledger write
        // times out, while raft may go on calling it leader until it hears
        // a newer term.
        let is_leader = driver.is_some();
        let Some(driver) = driver else {
            // A follower (or a leader still catching up): the ledger as this
            // node has applied it; the pipeline lives on the leader.
            let status = self.ledger.with_state(|l| pb::Status {
                cluster_id: l.cluster_id.clone(),
                epoch: l.epoch,
                last_committed_tid: l.last_committed,
                open_tid: l.open_txn().map(|t| t.tid).unwrap_or(0),
                newest_complete_checkpoint: l.newest_checkpoint(),
                is_leader,
                node_id,
                leader_id,
                leader_addr,
                raft_term,
                stale: true,
                ..Default::default()
            });
            return Ok(stale(Response::new(status)));
        };
        let (last_replay, replay, commit_latency, commit_prepare_latency, commit_ledger_latency) = {
            let st = lock(&driver.stats);
            (st.last_replay, st.replay.as_ref().map(ReplayRun::progress), st.commit.to_pb(), st.prepare.to_pb(), st.ledger.to_pb())
        };
        let coordinator_id = driver.coordinator_id.clone();
        let status = driver
            .query(move |core| {
                let l = core.ledger();
                let (open_tid, txn_state) = match core.phase() {
                    Phase::Running(t) => match t {
                        Txn::Beginning { tid } => (*tid, "Beginning"),
                        Txn::Open { tid, .. } => (*tid, "Open"),
                        Txn::Preparing { tid, .. } => (*tid, "Preparing"),
                        Txn::Committing { tid, .. } => (*tid, "Committing"),
                        Txn::Checkpointing { tid } | Txn::RecordingCheckpoint { tid } => (*tid, "Checkpointing"),
                    },
                    Phase::Replaying { tid, .. } => (*tid, "Replaying"),
                    _ => (l.open_txn().map(|t| t.tid).unwrap_or(0), "Idle"),
                };
                pb::Status {
                    cluster_id: l.cluster_id.clone(),
                    pipeline_state: core.phase().name().into(),
                    epoch: l.epoch,
                    last_committed_tid: l.last_committed,
                    open_tid,
                    txn_state: txn_state.into(),
                    newest_complete_checkpoint: l.newest_checkpoint(),
                    hosts: host_statuses(core),
                    failure: match core.phase() {
                        Phase::Failed(d) => d.to_string(),
                        _ => String::new(),
                    },
                    coordinator_id: coordinator_id.to_string(),
                    is_leader,
                    last_replay: Some(last_replay),
                    // The core's phase says whether a replay is under way;
                    // the shell keeps its counts and clock.
                    replay: replay.filter(|_| matches!(core.phase(), Phase::Replaying { .. })),
                    commit_latency: Some(commit_latency),
                    commit_prepare_latency: Some(commit_prepare_latency),
                    commit_ledger_latency: Some(commit_ledger_latency),
                    node_id,
                    leader_id,
                    leader_addr,
                    raft_term,
                    stale: false,
                    last_recovery: core.last_recovery().map(|r| pb::Recovery {
                        path: r.path.as_str().into(),
                        why: r.why.clone(),
                        epoch: r.epoch,
                    }),
                }
            })
            .await?;
        Ok(Response::new(status))
    }

    async fn list_hosts(&self, _: Request<pb::ListHostsRequest>) -> Result<Response<pb::ListHostsResponse>, Status> {
        let hosts = self.driver("ListHosts (host state lives on the leader)")?.query(host_statuses).await?;
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit.min(10_000) } as usize;
        let list = move |l: &crate::ledger::LedgerState| -> Vec<pb::Transaction> {
            l.txns.range(r.from_tid..).take(limit).map(|(_, t)| txn_to(t)).collect()
        };
        let Some(driver) = self.driver_if_leading() else {
            let transactions = self.ledger.with_state(list);
            return Ok(stale(Response::new(pb::ListTransactionsResponse { transactions })));
        };
        let transactions = driver.query(move |core| list(core.ledger())).await?;
        Ok(Response::new(pb::ListTransactionsResponse { transactions }))
    }

    async fn get_transaction(&self, request: Request<pb::GetTransactionRequest>) -> Result<Response<pb::Transaction>, Status> {
        let tid = request.into_inner().tid;
        let Some(driver) = self.driver_if_leading() else {
            return self.ledger.with_state(|l| find_txn(l, tid)).map(|t| stale(Response::new(t))).map_err(stale_refusal);
        };
        driver.query(move |core| find_txn(core.ledger(), tid)).await?.map(Response::new)
    }

    async fn explain_failure(&self, _: Request<pb::ExplainFailureRequest>) -> Result<Response<pb::Failure>, Status> {
        let f = self
            .driver("ExplainFailure (the pipeline's diagnosis lives on the leader)")?
            .query(|core| match core.phase() {
                Phase::Failed(d) => wire::failure_to(Some(d)),
                _ => wire::failure_to(None),
            })
            .await?;
        Ok(Response::new(f))
    }

    async fn checkpoint(&self, request: Request<pb::CheckpointRequest>) -> Result<Response<pb::CheckpointResponse>, Status> {
        self.authorize(&request, "Checkpoint")?;
        let driver = self.driver("Checkpoint")?;
        let phase = driver.query(|core| core.phase().name()).await?;
        if matches!(phase, "Failed" | "Stopped") {
            return Err(Status::failed_precondition(format!(
                "the pipeline is {phase}: no transaction will commit, so no checkpoint can follow; Resume it first"
            )));
        }
        driver.event(Event::AdminCheckpoint).await?;
        Ok(Response::new(pb::CheckpointResponse { message: "a checkpoint follows the next commit".into() }))
    }

    async fn stop(&self, request: Request<pb::StopRequest>) -> Result<Response<pb::StopResponse>, Status> {
        self.authorize(&request, "Stop")?;
        let reason = request.into_inner().reason;
        let reason = if reason.is_empty() { "operator request".to_string() } else { reason };
        let driver = self.driver("Stop")?;
        // A Stop of a pipeline that already stands still changes nothing
        // (a failure's diagnosis stays); say so rather than "stopping".
        let already = driver
            .query(|core| match core.phase() {
                Phase::Failed(_) => Some("the pipeline is already Failed and stands still; its diagnosis stays (ExplainFailure); Resume recovers it".to_string()),
                Phase::Stopped { reason } => Some(format!("the pipeline is already Stopped ({reason}); Resume recovers it")),
                _ => None,
            })
            .await?;
        if let Some(message) = already {
            return Ok(Response::new(pb::StopResponse { message }));
        }
        driver.event(Event::AdminStop { reason }).await?;
        Ok(Response::new(pb::StopResponse { message: "pipeline stopping; Resume recovers it".into() }))
    }

    async fn resume(&self, request: Request<pb::ResumeRequest>) -> Result<Response<pb::ResumeResponse>, Status> {
        self.authorize(&request, "Resume")?;
        let driver = self.driver("Resume")?;
        let phase = driver.query(|core| core.phase().name()).await?;
        if !matches!(phase, "Failed" | "Stopped") {
            return Err(Status::failed_precondition(format!(
                "the pipeline is {phase}; Resume applies only to a Failed or Stopped pipeline"
            )));
        }
        driver.event(Event::AdminResume).await?;
        Ok(Response::new(pb::ResumeResponse {
            message: "resuming: recovery starts once every host is connected".into(),
        }))
    }

    async fn list_nodes(&self, _: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        Ok(Response::new(pb::ListNodesResponse { nodes: nodes_of(&self.ledger) }))
    }

    async fn add_node(&self, request: Request<pb::AddNodeRequest>) -> Result<Response<pb::AddNodeResponse>, Status> {
        self.authorize(&request, "AddNode")?;
        let r = request.into_inner();
        if r.node_id == 0 || r.addr.is_empty() {
            return Err(Status::invalid_argument("AddNode needs node_id > 0 and the node's addr (host:port)"));
        }
        if !self.ledger.is_leader() {
            return Err(not_leader_status("AddNode", &self.ledger));
        }
        let members = self.ledger.members();
        if let Some(addr) = members.voters.get(&r.node_id) {
            if *addr != r.addr {
                return Err(Status::already_exists(format!(
                    "node {} is already a voter at {addr}; remove it first to move it to {}",
                    r.node_id, r.addr
                )));
            }
            return Ok(Response::new(pb::AddNodeResponse { nodes: nodes_of(&self.ledger) }));
        }
        if let Some((other, _)) = members.voters.iter().find(|(_, a)| **a == r.addr) {
            // One process would answer for both ids and send raft messages
            // to itself.
            return Err(Status::already_exists(format!(
                "node {other} is already a voter at {}; give node {} its own address",
                r.addr, r.node_id
            )));
        }
        self.ledger.add_learner(r.node_id, r.addr.clone()).await.map_err(|e| propose_status(&self.ledger, e))?;
        let mut voters: std::collections::BTreeSet<u64> = self.ledger.members().voters.keys().copied().collect();
        voters.insert(r.node_id);
        self.ledger.change_membership(voters, false).await.map_err(|e| propose_status(&self.ledger, e))?;
        info!(node = r.node_id, addr = %r.addr, "coordinator node added as a voter");
        Ok(Response::new(pb::AddNodeResponse { nodes: nodes_of(&self.ledger) }))
    }

    async fn remove_node(&self, request: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.authorize(&request, "RemoveNode")?;
        let id = request.into_inner().node_id;
        if !self.ledger.is_leader() {
            return Err(not_leader_status("RemoveNode", &self.ledger));
        }
        let members = self.ledger.members();
        if !members.voters.contains_key(&id) && !members.learners.contains_key(&id) {
            return Err(Status::not_found(format!(
                "node {id} is not a member; members are {:?}",
                members.voters.keys().chain(members.learners.keys()).collect::<Vec<_>>()
            )));
        }
        if members.voters.len() == 1 && members.voters.contains_key(&id) {
            return Err(Status::failed_precondition(format!("node {id} is the only voter; a group needs at least one")));
        }
        self.ledger.remove_node(id).await.map_err(|e| propose_status(&self.ledger, e))?;
        info!(node = id, "coordinator node removed from the group");
        Ok(Response::new(pb::RemoveNodeResponse { nodes: nodes_of(&self.ledger) }))
    }
}

/// The group's members; on the leader, each with its replication progress
/// (`Ledger::progress`).
fn nodes_of(ledger: &Ledger) -> Vec<pb::Node> {
    let members = ledger.members();
    let leader = ledger.leader().map(|(id, _)| id);
    let progress: std::collections::BTreeMap<u64, pb::NodeProgress> = ledger
        .progress()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let shown = pb::NodeProgress {
                matched_index: p.matched.unwrap_or(0),
                behind: p.behind,
                last_answer_ms_ago: p.silent_for.map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
                problem: p.problem.unwrap_or_default(),
            };
            (p.node_id, shown)
        })
        .collect();
    let voters = members.voters.into_iter().map(|(id, addr)| (id, addr, true));
    let learners = members.learners.into_iter().map(|(id, addr)| (id, addr, false));
    voters
        .chain(learners)
        .map(|(node_id, addr, voter)| pb::Node {
            node_id,
            addr,
            voter,
            leader: leader == Some(node_id),
            progress: progress.get(&node_id).cloned(),
        })
        .collect()
}

/// UNAVAILABLE naming the leader (message and `lockstep-leader` metadata),
/// for requests only the leader can serve.
/// The leader is the one this node has heard from lately
/// (`Ledger::live_leader`): a follower's metrics keep naming a dead leader
/// until the next election.
pub fn not_leader_status(what: &str, ledger: &Ledger) -> Status {
    let leader = ledger.live_leader().filter(|(id, _)| *id != ledger.node_id());
    let mut status = match &leader {
        Some((id, addr)) => Status::unavailable(format!(
            "this coordinator is not the leader; {what} goes to the leader, node {id} at {addr}"
        )),
        None => Status::unavailable(format!(
            "this coordinator is not the leader and no leader is known yet (election in progress?); retry {what} shortly"
        )),
    };
    if let Some((_, addr)) = leader {
        if let Ok(v) = addr.parse() {
            status.metadata_mut().insert(lockstep_proto::LEADER_METADATA_KEY, v);
        }
    }
    status
}

fn propose_status(ledger: &Ledger, e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { .. } => not_leader_status("a membership change", ledger),
        ProposeError::Membership(m) => Status::failed_precondition(m),
        ProposeError::Storage(m) => Status::internal(format!("ledger storage failed: {m}")),
        ProposeError::NoQuorum(m) => Status::unavailable(format!("{m}; retry once the coordinator group has a quorum")),
        ProposeError::Shutdown => Status::unavailable("coordinator is shutting down"),
    }
}

/// How [`serve`] listens besides its main listener.
#[derive(Default)]
pub struct ServeOptions {
    /// Mutual TLS on the main listener (`--tls-*`): every client (host
    /// agent, peer, Admin caller) must present a certificate the CA signed.
    pub tls: Option<lockstep_host_agent::tls::Tls>,
    /// With `tls`: the DNS name (per host id) each host agent's client
    /// certificate must be valid for (`--tls-host-name`).
    pub host_names: Option<lockstep_host_agent::tls::HostNames>,
    /// With `tls`: the DNS name a client certificate must be valid for to
    /// change the cluster through Admin (`--tls-admin-name`).
    pub admin_name: Option<lockstep_host_agent::tls::AdminName>,
    /// A second, plaintext listener with `grpc.health.v1.Health` alone
    /// (`--health-listen`): Kubernetes' gRPC probes speak no TLS, and a
    /// health answer carries nothing a client could use.
    pub health_listener: Option<tokio::net::TcpListener>,
    /// How long a client connection may leave an HTTP/2 ping unanswered
    /// before it is dropped: the report deadline, so that the transport
    /// does not drop a frozen host before the deadline does (a host
    /// stalled for less than `--report-deadline-ms` keeps its session).
    pub ping_timeout: Duration,
}

/// Serves HostSession, Admin, health and reflection on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    leading: Leading,
    ledger: Ledger,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::admin_server::AdminServer<AdminService>>().await;
    health.set_serving::<pb::host_session_server::HostSessionServer<HostSessionService>>().await;
    health.set_serving::<crate::raft::RaftPeerServer<crate::raft::PeerService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(lockstep_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(lockstep_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    match &options.tls {
        Some(tls) => info!(%addr, "coordinator listening (HostSession, Admin, health, reflection; mutual TLS: {})", tls.describe()),
        None => info!(%addr, "coordinator listening (HostSession, Admin, health, reflection)"),
    }
    // The health-only listener stops with the main one.
    let (health_stop, health_stopped) = oneshot::channel::<()>();
    let health_server = match options.health_listener {
        Some(l) => Some(lockstep_host_agent::health::spawn("coordinator".into(), l, health.clone(), health_stopped).map_err(anyhow::Error::msg)?),
        None => None,
    };
    // The graceful shutdown below waits for every open call to end, and the
    // long-lived ones (host sessions, WatchEvents) end only with the
    // driver, which a quiesced node keeps: so the driver is stopped first.
    // Without this, one connected host or one watcher kept a stopping
    // coordinator up until its orchestrator's SIGKILL.
    let closing = leading.clone();
    let stopping_health = health.clone();
    let shutdown = async move {
        shutdown.await;
        // Probes and health watchers see the stop before the calls end: the
        // whole server ("", what Kubernetes' gRPC probes ask) and each service.
        stopping_health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        stopping_health.set_not_serving::<pb::admin_server::AdminServer<AdminService>>().await;
        stopping_health.set_not_serving::<pb::host_session_server::HostSessionServer<HostSessionService>>().await;
        stopping_health.set_not_serving::<crate::raft::RaftPeerServer<crate::raft::PeerService>>().await;
        let driver = closing.borrow().clone();
        if let Some(driver) = driver {
            let stop = driver.stop(Status::unavailable(
                "this coordinator is shutting down; the host agent reconnects to another member of the group, or to this \
                 one once it is back",
            ));
            // Queued behind whatever the driver has to do first; a driver
            // that does not take it in time leaves its streams to the drain
            // bound rather than holding the stop.
            if tokio::time::timeout(DRAIN_GRACE, stop).await.is_err() {
                warn!("the pipeline driver did not take the stop within {DRAIN_GRACE:?}; closing the server anyway");
            }
        }
    };
    let router = lockstep_host_agent::drain::server_with_ping_timeout(options.ping_timeout)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::host_session_server::HostSessionServer::new(HostSessionService {
                leading: leading.clone(),
                ledger: ledger.clone(),
                host_names: options.host_names.clone(),
            })
                .max_decoding_message_size(HOST_REPORT_BYTES_MAX),
        )
        .add_service(crate::raft::peer_service(&ledger, options.tls.is_some()))
        .add_service(pb::admin_server::AdminServer::new(AdminService { leading, ledger, admin_name: options.admin_name.clone() }));
    let served = lockstep_host_agent::drain::serve_with_bounded_drain("the coordinator's gRPC server", shutdown, DRAIN_GRACE, |signal| {
        lockstep_host_agent::tls::serve(router, listener, options.tls, "coordinator", signal)
    })
    .await;
    let _ = health_stop.send(());
    if let Some(h) = health_server {
        let _ = h.await;
    }
    if let Some(r) = served {
        r?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_transaction_says_why_a_tid_has_no_record() {
        let l: crate::ledger::LedgerState = serde_json::from_str(
            r#"{"cluster_id":"c","hosts":["h0"],"epoch":1,"tid_high_water":9,"last_committed":8,"checkpoints":[6],
                "txns":{"5":{"tid":5,"status":"Committed","epoch":1,"hosts":{},"failure":null},
                        "9":{"tid":9,"status":"Begun","epoch":1,"hosts":{},"failure":null}},"history_max":1}"#,
        )
        .unwrap();
        assert_eq!(find_txn(&l, 9).unwrap().tid, 9);
        let refused = |tid| find_txn(&l, tid).unwrap_err();
        let e = refused(0);
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("tids start at 1"), "{e:?}");
        let e = refused(10);
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(e.message(), "tid 10 has not begun; the highest tid issued is 9");
        let e = refused(4);
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().starts_with("tid 4 is older than the oldest tid the ledger keeps (5)"), "{e:?}");
        let e = refused(7);
        assert!(e.message().starts_with("the ledger holds no record of tid 7; use ListTransactions"), "{e:?}");
    }

    #[test]
    fn a_follower_refusal_keeps_the_original_details_and_metadata() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("x-origin", tonic::metadata::MetadataValue::from_static("ledger"));
        let original = Status::with_details_and_metadata(tonic::Code::NotFound, "tid 10 has not begun", b"why".to_vec().into(), metadata);
        let e = stale_refusal(original);
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().starts_with("tid 10 has not begun (answered by a follower"), "{e:?}");
        assert_eq!(e.details(), b"why");
        assert_eq!(e.metadata().get("x-origin").map(|v| v.to_str().unwrap()), Some("ledger"));
        assert_eq!(e.metadata().get(lockstep_proto::STALE_METADATA_KEY).map(|v| v.to_str().unwrap()), Some("true"));
    }
}
