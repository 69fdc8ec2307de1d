//! The host agent's transaction state machine: pure, deterministic, sans-IO.
//!
//! `HostCore` owns the host's transaction state, the fencing epoch and the
//! per-stream command sequence check. It does no I/O, reads no clock and
//! knows nothing of tokio or tonic: the runtime (`runtime.rs`) feeds it
//! `Event`s (a command arrived, a step finished, the journaled steps of a
//! replayed tid ran out, an action failed, the stream opened or closed) and
//! executes the `Action`s it returns, in order, in one `match`. If an action
//! fails, the runtime skips the rest of that list and feeds back
//! `Event::ActionFailed`, so a report that depends on an fsync is never sent
//! when the fsync failed.
//!
//! Whether the runtime should run another engine step is not an event but a
//! question: `next_step()` answers it from the state alone. The runtime runs
//! each step to completion (journal append, engine step) before it looks at
//! the next command, so from the core's point of view a step is atomic, and
//! "finish the current step, start no new one" (Prepare) needs no extra
//! state.
//!
//! Transition table (`T` = the open tid; `C` = last committed tid since the
//! last restore; `O` = highest tid opened since the last restore). Stream
//! checks come first: a command seq gap, or any command before `Welcome`, is
//! a protocol error that also drops the stream; a stale epoch is rejected
//! with `stale_epoch` (a stale `Welcome` also drops the stream, so that the
//! runtime tries another coordinator: that one is not the current leader);
//! a higher epoch is persisted (`PersistEpoch`) before the command is acted
//! on, whether or not it is legal in the current state.
//!
//! | state | event | next state | actions |
//! |---|---|---|---|
//! | any | `Stop` | Stopped | `AbandonTxn` if a txn is open |
//! | any | `CheckpointComplete{K}` | unchanged | `CheckpointComplete{K}` |
//! | Stopped, Idle | `Restore{K}` | Idle (C = O = K) | `Restore{K}`, report `Restored{K}` |
//! | OpenLive{T}, Prepared{T}, PausedLive{T}, PausedPrepared{T} | `Restore{K}` | Idle (C = O = K) | `AbandonTxn{T}`, `Restore{K}`, report `Restored{K}` |
//! | Idle | `Start{T > O, Live}` | OpenLive{T} | `OpenTxn{T, Live}` |
//! | Idle | `Start{T > O, Replay}` | OpenReplay{T, no prepare} | `OpenTxn{T, Replay}` |
//! | Idle | `Start{T > O, Replay, prepare}` | OpenReplay{T, prepare} | `OpenTxn{T, Replay}` (T is committed: ends at the journaled boundary) |
//! | Idle | `Checkpoint{C}` | Idle | `Checkpoint{C}`, report `CheckpointDone{C}` |
//! | OpenLive{T}, PausedLive{T} | `Prepare{T}` | Prepared{T} | `Prepare{T}` |
//! | OpenLive{T}, PausedLive{T} | `Prepare{T, next: Start{N > O, Live}}` | OpenLive{N}, T awaiting | `Prepare{T}`, `OpenTxn{N, Live}` (commit pipeline, below) |
//! | OpenLive{T} | step of T finished (live) | OpenLive{T} | report `StepDone` |
//! | OpenReplay{T, p} | step of T finished (replayed) | unchanged | report `StepDone` (with journaled) |
//! | OpenReplay{T, no} | `Prepare{T}` | OpenReplay{T, yes} | — (the journaled steps still run) |
//! | OpenReplay{T, yes} | journaled steps exhausted | Prepared{T} | `Prepare{T}` |
//! | OpenReplay{T, no} | exhausted, journal has T's commit marker | ReplayDrained{T} | — (waits for Prepare) |
//! | OpenReplay{T, no} | exhausted, no commit marker | OpenLive{T} | — (invariant 4, see `on_replay_exhausted`) |
//! | ReplayDrained{T} | `Prepare{T}` | Prepared{T} | `Prepare{T}` |
//! | PausedPrepared{T} | `Prepare{T}` | Prepared{T} | `RepeatPrepared{T}` (the same report again, on this stream) |
//! | Prepared{T}, PausedPrepared{T} (nothing awaiting) | `Commit{T, next?}` (next > T) | Idle, or Open{next} | `Commit{T}`, report `Committed{T}`, \[`OpenTxn{next}`\] |
//! | OpenReplay{T, yes} sealed | `Start{T' > O, Replay, prepare}` | unchanged, T' queued ahead | — (replay window, below) |
//! | Prepared{T} sealed | `Start{T' > O, Replay, prepare}` | OpenReplay{T', yes} sealed, T awaiting | `OpenTxn{T', Replay}` |
//! | OpenReplay{T, yes} sealed, a tid T' queued ahead | journaled steps exhausted | OpenReplay{T', yes} sealed, T awaiting | `Prepare{T}`, `OpenTxn{T', Replay}` |
//! | any, T = oldest awaiting | `Commit{T}` (no next) | unchanged | `Commit{T}`, report `Committed{T}` |
//! | OpenReplay{_, yes} or Prepared{_}, sealed, T = oldest awaiting | `Commit{T, next: Start{T' > O, Replay, prepare}}` | as `Start{T'}` alone would leave it | `Commit{T}`, report `Committed{T}`, then what `Start{T'}` does (replay window) |
//! | Prepared{T} with an older tid awaiting | `Commit{T, ..}` | unchanged | report `HostError{kind:"protocol"}` (commits come in tid order) |
//! | any | an action failed | Stopped | `AbandonTxn` if open, report the error |
//! | Idle, Stopped | stream closed | unchanged | — |
//! | OpenLive{T}, PausedLive{T} | stream closed | PausedLive{T} | — (keeps its steps; see `on_stream_closed`) |
//! | Prepared{T}, PausedPrepared{T} | stream closed | PausedPrepared{T} | — |
//! | OpenReplay, ReplayDrained, or anything queued ahead or awaiting in a replay window | stream closed | Stopped | `AbandonTxn` |
//! | any other pair | | unchanged | report `HostError{kind:"protocol"}` |
//!
//! **Replay window.** A *sealed* replay is one opened by `Start{T, Replay,
//! prepare}`: a tid the ledger already committed, which ends at its
//! journaled boundary. While a sealed replay runs or is prepared, the
//! coordinator may send the `Start`s of the next committed tids ahead of
//! `Commit{T}`, so that the host runs T+1 while the coordinator verifies T
//! instead of waiting a round trip per tid. The host then keeps two queues:
//! `ahead` (sealed Starts received, not yet opened, in tid order) and
//! `awaiting` (replayed tids prepared and reported whose `Commit` has not
//! arrived, oldest first; the runtime holds their outputs). When the
//! current sealed tid prepares and a Start is queued ahead, the host opens
//! it at once. `Commit{T}` for the oldest awaiting tid releases T and
//! changes nothing else, unless it carries the next sealed `Start`, which
//! then does exactly what it does alone (one command per replayed tid).
//! No output leaves the host before its own `Commit`, so a divergence found in T (the coordinator then sends `Stop`)
//! still releases nothing unverified: `Stop`, `Restore` and a lost stream
//! drop every awaiting tid with the open one.
//!
//! **Commit pipeline.** Live tids overlap the same way when the coordinator
//! runs with `--pipeline-depth` above 1: `Prepare{T, next: Start{N, Live}}`
//! prepares T (its outputs held, T awaiting) and opens N at once, so the
//! host's steps go on while the coordinator collects every host's Prepared
//! and records T's commit. `Commit{T}` (no next) for the oldest awaiting tid
//! releases it. A lost stream keeps the awaiting tids (outputs held) with
//! the open or prepared tid after them (`PausedLive`/`PausedPrepared`), and
//! the next Hello offers them (`resumable`), so a new coordinator can
//! continue the pipeline without a restore: `Commit{T}` for what the ledger
//! holds, `Prepare{T, next}` to catch up.
//!
//! `Stopped` is also the state at process start: the engine's state matches
//! no committed boundary until the coordinator has sent `Restore`.
//! `CheckpointComplete` is accepted in every state (the ARCHITECTURE table
//! lists it under Idle): it only deletes what the ledger has declared
//! obsolete, and a coordinator may well send it after the next `Start`.

use lockstep_journal::EndpointChecksums;
use std::collections::VecDeque;
use std::fmt;

/// How a transaction's steps are produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Fresh input, journaled, then run.
    Live,
    /// The steps journaled under the tid, re-run with their step numbers.
    Replay,
}

/// The host's transaction state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// No valid engine state (process start, after `Stop`, after a failure,
    /// after losing the stream mid-replay); only `Restore` leaves it.
    Stopped,
    /// Between transactions, engine state at a committed boundary.
    Idle,
    /// Running live steps of `tid`.
    OpenLive { tid: u64 },
    /// Re-running the journaled steps of `tid`; `prepare_requested` once the
    /// coordinator has sent `Prepare` (acted on when the steps run out).
    OpenReplay { tid: u64, prepare_requested: bool },
    /// All journaled steps of `tid` re-run, and the journal holds `tid`'s
    /// commit marker, so the transaction must end exactly here: no steps,
    /// waiting for `Prepare`.
    ReplayDrained { tid: u64 },
    /// Prepared report sent; no more steps in `tid`; waiting for `Commit`.
    Prepared { tid: u64 },
    /// `OpenLive{tid}` whose coordinator stream ended: its steps stay run
    /// and accounted, and it runs no new step ("paused") until a
    /// coordinator continues it (`Prepare{tid}`) or replaces it (`Restore`,
    /// `Stop`). A new leader, or a restarted coordinator, can then carry the
    /// transaction on without restoring a checkpoint (`Hello.resumable`).
    PausedLive { tid: u64 },
    /// `Prepared{tid}` whose coordinator stream ended: the prepared outputs
    /// stay held; `Prepare{tid}` on a new stream re-sends the same report,
    /// `Commit{tid}` commits it.
    PausedPrepared { tid: u64 },
}

impl TxnState {
    /// The open (or prepared) transaction, if any.
    pub fn tid(&self) -> Option<u64> {
        match *self {
            TxnState::Stopped | TxnState::Idle => None,
            TxnState::OpenLive { tid }
            | TxnState::OpenReplay { tid, .. }
            | TxnState::ReplayDrained { tid }
            | TxnState::Prepared { tid }
            | TxnState::PausedLive { tid }
            | TxnState::PausedPrepared { tid } => Some(tid),
        }
    }
}

impl fmt::Display for TxnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnState::Stopped => write!(f, "Stopped"),
            TxnState::Idle => write!(f, "Idle"),
            TxnState::OpenLive { tid } => write!(f, "Open(tid {tid}, live)"),
            TxnState::OpenReplay { tid, prepare_requested } => {
                write!(f, "Open(tid {tid}, replay, prepare requested: {prepare_requested})")
            }
            TxnState::ReplayDrained { tid } => write!(f, "Open(tid {tid}, replay drained, waiting for Prepare)"),
            TxnState::Prepared { tid } => write!(f, "Prepared(tid {tid})"),
            TxnState::PausedLive { tid } => write!(f, "Open(tid {tid}, live, paused: no coordinator stream)"),
            TxnState::PausedPrepared { tid } => write!(f, "Prepared(tid {tid}, paused: no coordinator stream)"),
        }
    }
}

/// A coordinator command, decoded from the wire (see `convert.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Welcome { coordinator_id: String },
    /// `prepare`: replay of a tid the ledger already committed; it ends at
    /// the journaled boundary (see `Start.prepare` in the proto).
    Start { tid: u64, mode: Mode, prepare: bool },
    /// `next`: the commit pipeline's next live tid (see the module docs).
    Prepare { tid: u64, next: Option<(u64, Mode, bool)> },
    Commit { tid: u64, next: Option<(u64, Mode, bool)> },
    Checkpoint { tid: u64 },
    CheckpointComplete { tid: u64 },
    Restore { checkpoint_tid: u64 },
    Stop { reason: String },
}

impl Command {
    fn tid(&self) -> u64 {
        match self {
            Command::Welcome { .. } | Command::Stop { .. } => 0,
            Command::Start { tid, .. }
            | Command::Prepare { tid, .. }
            | Command::Commit { tid, .. }
            | Command::Checkpoint { tid }
            | Command::CheckpointComplete { tid } => *tid,
            Command::Restore { checkpoint_tid } => *checkpoint_tid,
        }
    }
}

/// Machine-readable `HostError.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A command that is illegal in the current state, malformed, out of
    /// sequence, or before `Welcome`.
    Protocol,
    /// A command from an epoch older than the highest this host has seen.
    StaleEpoch,
    /// Reading the journal failed or found it damaged.
    Journal,
    /// Writing to the host's data directory failed (the journal, the sink,
    /// a checkpoint, the epoch file; a full or failing disk);
    /// the agent exits after reporting it (`AgentError::DiskWrite`), and
    /// the coordinator treats the host as lost, not the pipeline as failed.
    DiskWrite,
    Engine,
    Sink,
    Checkpoint,
    /// A bug in the agent itself (the runtime broke the core's contract).
    Internal,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Protocol => "protocol",
            ErrorKind::StaleEpoch => "stale_epoch",
            ErrorKind::Journal => "journal",
            ErrorKind::DiskWrite => "disk_write",
            ErrorKind::Engine => "engine",
            ErrorKind::Sink => "sink",
            ErrorKind::Checkpoint => "checkpoint",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Something the runtime tells the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new coordinator stream is up (the runtime has queued `Hello`).
    StreamOpened,
    /// The stream ended (dropped, reset, or closed by us).
    StreamClosed,
    Command { seq: u64, epoch: u64, command: Command },
    /// A command whose body could not be decoded (missing oneof, unknown
    /// mode); `seq` and `epoch` are still checked.
    MalformedCommand { seq: u64, epoch: u64, reason: String },
    /// A step the core asked for (`next_step`) completed. `journaled` is the
    /// journal's record of the step in replay, `None` live.
    StepFinished { tid: u64, step: u64, checksums: EndpointChecksums, journaled: Option<EndpointChecksums> },
    /// The journal holds no more steps of the replayed `tid`.
    /// `commit_marker`: the journal also holds `tid`'s commit marker.
    ReplayExhausted { tid: u64, commit_marker: bool },
    /// An action failed; the runtime skipped the rest of its action list.
    ActionFailed { kind: ErrorKind, tid: u64, message: String },
}

/// A report the core decided to send (the runtime adds the seq number).
/// `Prepared` is not here: its digest comes from the engine, so the runtime
/// builds it when it executes `Action::Prepare`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    StepDone { tid: u64, step: u64, checksums: EndpointChecksums, journaled: Option<EndpointChecksums>, mode: Mode },
    Committed { tid: u64 },
    CheckpointDone { tid: u64 },
    Restored { checkpoint_tid: u64 },
    Error { kind: ErrorKind, tid: u64, message: String },
}

/// What the runtime must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write `epoch` to `<data-dir>/epoch` and fsync, before anything after it.
    PersistEpoch { epoch: u64 },
    Report(Report),
    /// Start accounting for `tid`; in replay, read the journal's steps of
    /// `tid` (from the reader that read it ahead, or a new one).
    OpenTxn { tid: u64, mode: Mode },
    /// Take the engine's outputs of `tid`, digest them, hold them until the
    /// commit, and report `Prepared{tid, steps, aggregate, digest}`.
    Prepare { tid: u64 },
    /// Send again the `Prepared` report of `tid` that an earlier stream
    /// carried (the outputs are already held; nothing is taken again).
    RepeatPrepared { tid: u64 },
    /// Journal `tid`'s commit marker (queued; durable with the journal's
    /// next sync, which every later record waits for; skipped if the
    /// journal has it), then hand the held outputs to the sink writer
    /// (queued, written and synced in the background in tid order; skipped
    /// if the sink holds or has queued the tid). A failed sink write
    /// surfaces as the failure (kind `sink`) of the next action that needs
    /// the sink (`Commit`, `Checkpoint`, `Restore`), in whatever state the
    /// core is then; `Checkpoint` waits until the sink holds every tid.
    Commit { tid: u64 },
    /// Forget the open transaction (accounting, held outputs, journal
    /// reader) and every prepared tid still awaiting its commit (their held
    /// outputs). Their steps stay in the journal for the next replay.
    AbandonTxn { tid: u64 },
    /// Checkpoint the engine as `tid` durably, then journal a checkpoint
    /// record.
    Checkpoint { tid: u64 },
    /// The ledger holds checkpoint `tid` complete: delete older checkpoints
    /// and journal segments before its record.
    CheckpointComplete { tid: u64 },
    /// Restore the engine to checkpoint `checkpoint_tid` (0 = empty state).
    Restore { checkpoint_tid: u64 },
    /// End the stream (protocol violation); the runtime reconnects.
    DropStream { reason: String },
}

/// Where a host stands between coordinator streams (see `HostCore::resumable`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    /// Last tid committed since the last restore.
    pub last_committed: u64,
    /// The kept transaction: `(tid, prepared)`; `None` when Idle.
    pub open: Option<(u64, bool)>,
    /// Live tids prepared before `open` whose commit has not come (commit
    /// pipeline), oldest first.
    pub awaiting: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StreamState {
    /// The seq the next command must carry.
    next_seq: u64,
    welcomed: bool,
}

/// The host transaction state machine. See the module docs for the table.
#[derive(Clone, Debug)]
pub struct HostCore {
    state: TxnState,
    highest_epoch: u64,
    /// Last tid committed since the last restore (the restored checkpoint's
    /// tid right after a restore).
    last_committed: u64,
    /// Highest tid opened or queued ahead since the last restore: `Start`
    /// must exceed it.
    last_opened: u64,
    /// The open replay was started sealed (`Start{Replay, prepare}`): only
    /// then may later Starts queue ahead of its commit.
    sealed: bool,
    /// Sealed replay Starts received ahead, not yet opened (replay window).
    ahead: VecDeque<u64>,
    /// Replayed tids prepared and reported whose `Commit` has not arrived,
    /// oldest first; all below the open tid.
    awaiting: VecDeque<u64>,
    stream: Option<StreamState>,
}

impl HostCore {
    /// A core at process start: `Stopped` until the coordinator restores it.
    pub fn new(highest_epoch: u64) -> Self {
        HostCore {
            state: TxnState::Stopped,
            highest_epoch,
            last_committed: 0,
            last_opened: 0,
            sealed: false,
            ahead: VecDeque::new(),
            awaiting: VecDeque::new(),
            stream: None,
        }
    }

    // ------------------------------------------------------------ getters

    pub fn state(&self) -> TxnState {
        self.state
    }

    /// The highest epoch seen; commands of this epoch are current.
    pub fn highest_epoch(&self) -> u64 {
        self.highest_epoch
    }

    pub fn last_committed(&self) -> u64 {
        self.last_committed
    }

    /// Replayed tids prepared and awaiting their `Commit`, oldest first.
    pub fn awaiting(&self) -> &VecDeque<u64> {
        &self.awaiting
    }

    /// Sealed replay tids started ahead and not yet opened, in order.
    pub fn ahead(&self) -> &VecDeque<u64> {
        &self.ahead
    }

    /// What this host can offer a coordinator to continue from (the
    /// `Hello.resumable` of the next stream): `None` when the engine state
    /// matches no boundary a coordinator could continue (Stopped, or a
    /// stream still open mid-transaction).
    pub fn resumable(&self) -> Option<ResumePoint> {
        let open = match self.state {
            TxnState::Idle => None,
            TxnState::PausedLive { tid } => Some((tid, false)),
            TxnState::PausedPrepared { tid } => Some((tid, true)),
            _ => return None,
        };
        Some(ResumePoint { last_committed: self.last_committed, open, awaiting: self.awaiting.iter().copied().collect() })
    }

    /// True once the current stream has received `Welcome`.
    pub fn welcomed(&self) -> bool {
        self.stream.is_some_and(|s| s.welcomed)
    }

    /// The step the runtime should run next, if any: `(tid, mode)`.
    pub fn next_step(&self) -> Option<(u64, Mode)> {
        match self.state {
            TxnState::OpenLive { tid } => Some((tid, Mode::Live)),
            TxnState::OpenReplay { tid, .. } => Some((tid, Mode::Replay)),
            TxnState::Stopped
            | TxnState::Idle
            | TxnState::ReplayDrained { .. }
            | TxnState::Prepared { .. }
            | TxnState::PausedLive { .. }
            | TxnState::PausedPrepared { .. } => None,
        }
    }

    /// Whether a replayed step of `tid` that just finished is one this
    /// core asked for. Exactly then `handle(StepFinished)` of it does
    /// nothing but return its report (`Report::StepDone` in `Mode::Replay`,
    /// no state change), so the runtime queues that report itself, without
    /// building the event, an action list and an `execute` per replayed
    /// step (a replay's most frequent event). Otherwise the event must go
    /// through `handle`, which decides as for any other.
    pub fn takes_replayed_step(&self, tid: u64) -> bool {
        matches!(self.state, TxnState::OpenReplay { tid: t, .. } if t == tid)
    }

    // ------------------------------------------------------------ events

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::StreamOpened => self.on_stream_opened(),
            Event::StreamClosed => self.on_stream_closed(),
            Event::Command { seq, epoch, command } => self.on_command(seq, epoch, Ok(command)),
            Event::MalformedCommand { seq, epoch, reason } => self.on_command(seq, epoch, Err(reason)),
            Event::StepFinished { tid, step, checksums, journaled } => {
                self.on_step_finished(tid, step, checksums, journaled)
            }
            Event::ReplayExhausted { tid, commit_marker } => self.on_replay_exhausted(tid, commit_marker),
            Event::ActionFailed { kind, tid, message } => {
                let mut actions = self.stop();
                actions.push(Action::Report(Report::Error { kind, tid, message }));
                actions
            }
        }
    }

    fn on_stream_opened(&mut self) -> Vec<Action> {
        if self.stream.is_some() {
            // The runtime must close a stream before opening the next.
            return self.internal_error(0, "a second coordinator stream was opened while one is still open".into());
        }
        self.stream = Some(StreamState { next_seq: 1, welcomed: false });
        Vec::new()
    }

    fn on_stream_closed(&mut self) -> Vec<Action> {
        self.stream = None;
        if self.sealed && !self.awaiting.is_empty() {
            // Mid-replay-window, prepared: the engine is past replayed tids
            // whose commit never came, so it is at no committed boundary;
            // replayed after the next Restore, like any replay cut short
            // (a window with tids queued ahead is still replaying: the
            // `OpenReplay` arm below stops it).
            return self.stop();
        }
        // A commit pipeline's awaiting tids (live, prepared and reported)
        // are kept with the open or prepared tid after them and offered
        // with it in the next Hello (`resumable`): a new coordinator can
        // commit them from the ledger or from every host's report.
        match self.state {
            // Between transactions the engine state is a committed boundary
            // and stays valid for whichever coordinator we reach next.
            TxnState::Idle | TxnState::Stopped => Vec::new(),
            // Every step run so far is journaled and accounted; the state is
            // kept and offered in the next Hello (`resumable`), and no new
            // step runs: a coordinator that never saw a step's report must
            // not have to infer it, and the next one decides from what the
            // Hello says (continue with Prepare, or Restore).
            TxnState::OpenLive { tid } | TxnState::PausedLive { tid } => {
                self.state = TxnState::PausedLive { tid };
                Vec::new()
            }
            TxnState::Prepared { tid } | TxnState::PausedPrepared { tid } => {
                self.state = TxnState::PausedPrepared { tid };
                // A kept transaction is continued or replaced by whoever
                // comes next, never extended by a window.
                self.sealed = false;
                Vec::new()
            }
            // Mid-replay the engine state is between two journaled steps of a
            // tid being re-verified: no boundary a coordinator could continue
            // from. The transaction lives on in the journal and is replayed
            // after the next Restore.
            TxnState::OpenReplay { .. } | TxnState::ReplayDrained { .. } => self.stop(),
        }
    }

    fn on_command(&mut self, seq: u64, epoch: u64, command: Result<Command, String>) -> Vec<Action> {
        let tid = command.as_ref().map(Command::tid).unwrap_or(0);
        let Some(stream) = self.stream.as_mut() else {
            return self.internal_error(tid, format!("command seq {seq} arrived with no stream open"));
        };
        if seq != stream.next_seq {
            let message = format!(
                "command sequence gap: expected seq {}, got {seq}; dropping the stream and reconnecting",
                stream.next_seq
            );
            return vec![
                Action::Report(Report::Error { kind: ErrorKind::Protocol, tid, message: message.clone() }),
                Action::DropStream { reason: message },
            ];
        }
        stream.next_seq += 1;
        if !stream.welcomed && !matches!(command, Ok(Command::Welcome { .. })) {
            let message = format!("command seq {seq} arrived before Welcome; dropping the stream and reconnecting");
            return vec![
                Action::Report(Report::Error { kind: ErrorKind::Protocol, tid, message: message.clone() }),
                Action::DropStream { reason: message },
            ];
        }
        if epoch < self.highest_epoch {
            if matches!(command, Ok(Command::Welcome { .. })) {
                // A coordinator welcoming us in an older epoch is not the
                // current leader (deposed, or restored from an old ledger):
                // drop its stream so the runtime tries another coordinator.
                let message = format!(
                    "Welcome (seq {seq}) carries epoch {epoch}, but this host has already accepted epoch {}: this \
                     coordinator is behind the current leader; dropping the stream and trying another coordinator",
                    self.highest_epoch
                );
                return vec![
                    Action::Report(Report::Error { kind: ErrorKind::StaleEpoch, tid, message: message.clone() }),
                    Action::DropStream { reason: message },
                ];
            }
            return vec![Action::Report(Report::Error {
                kind: ErrorKind::StaleEpoch,
                tid,
                message: format!(
                    "command seq {seq} carries epoch {epoch}, but this host has already accepted epoch {}; ignored",
                    self.highest_epoch
                ),
            })];
        }
        let mut actions = Vec::new();
        if epoch > self.highest_epoch {
            self.highest_epoch = epoch;
            actions.push(Action::PersistEpoch { epoch });
        }
        match command {
            Err(reason) => actions.push(self.protocol_error(tid, format!("malformed command seq {seq}: {reason}"))),
            Ok(Command::Welcome { coordinator_id }) => {
                let stream = self.stream.as_mut().expect("checked above");
                if stream.welcomed {
                    actions.push(self.protocol_error(
                        0,
                        format!("duplicate Welcome (seq {seq}, coordinator {coordinator_id:?}) on one stream"),
                    ));
                } else {
                    stream.welcomed = true;
                }
            }
            Ok(command) => actions.extend(self.on_txn_command(command)),
        }
        actions
    }

    /// The transaction table proper (stream and epoch checks passed).
    fn on_txn_command(&mut self, command: Command) -> Vec<Action> {
        use TxnState::*;
        match (self.state, &command) {
            (_, Command::Stop { .. }) => self.stop(),
            (_, Command::CheckpointComplete { tid }) => vec![Action::CheckpointComplete { tid: *tid }],
            // Restore replaces whatever the engine holds, including a kept
            // open or prepared transaction the new coordinator chose not to
            // continue (its steps stay in the journal and are replayed).
            (
                Stopped | Idle | OpenLive { .. } | Prepared { .. } | PausedLive { .. } | PausedPrepared { .. },
                Command::Restore { checkpoint_tid },
            ) => {
                let c = *checkpoint_tid;
                let mut actions = self.stop();
                self.state = Idle;
                self.last_committed = c;
                self.last_opened = c;
                actions.extend([Action::Restore { checkpoint_tid: c }, Action::Report(Report::Restored { checkpoint_tid: c })]);
                actions
            }
            (Idle, Command::Start { tid, mode, prepare }) if *tid > self.last_opened => self.open(*tid, *mode, *prepare),
            (Idle, Command::Checkpoint { tid }) if *tid == self.last_committed => {
                vec![Action::Checkpoint { tid: *tid }, Action::Report(Report::CheckpointDone { tid: *tid })]
            }
            (OpenLive { tid: t } | ReplayDrained { tid: t } | PausedLive { tid: t }, Command::Prepare { tid, next: None })
                if *tid == t =>
            {
                self.state = Prepared { tid: t };
                vec![Action::Prepare { tid: t }]
            }
            // Commit pipeline (module docs): T waits for its commit with its
            // outputs held while the next live tid runs.
            (OpenLive { tid: t } | PausedLive { tid: t }, Command::Prepare { tid, next: Some((n, Mode::Live, false)) })
                if *tid == t && *n > self.last_opened =>
            {
                self.awaiting.push_back(t);
                let mut actions = vec![Action::Prepare { tid: t }];
                actions.extend(self.open(*n, Mode::Live, false));
                actions
            }
            (PausedPrepared { tid: t }, Command::Prepare { tid, next: None }) if *tid == t => {
                // The coordinator on this stream has not seen our report (a
                // new leader, or the same coordinator after a rejoin).
                self.state = Prepared { tid: t };
                vec![Action::RepeatPrepared { tid: t }]
            }
            (OpenReplay { tid: t, prepare_requested: false }, Command::Prepare { tid, next: None }) if *tid == t => {
                // Replay ends at the journaled boundary, not now: the
                // remaining journaled steps of T still belong to T.
                self.state = OpenReplay { tid: t, prepare_requested: true };
                Vec::new()
            }
            // Replay window (module docs): a committed tid's Start ahead of
            // the current sealed tid's commit.
            (OpenReplay { prepare_requested: true, .. }, Command::Start { tid, mode: Mode::Replay, prepare: true })
                if self.sealed && *tid > self.last_opened =>
            {
                self.ahead.push_back(*tid);
                self.last_opened = *tid;
                Vec::new()
            }
            (Prepared { tid: t }, Command::Start { tid, mode: Mode::Replay, prepare: true })
                if self.sealed && *tid > self.last_opened =>
            {
                self.awaiting.push_back(t);
                self.open(*tid, Mode::Replay, true)
            }
            // Replay window: the Commit of the oldest awaiting tid may carry
            // the next sealed Start, which then does exactly what that
            // Start alone would (one command per tid instead of two).
            (OpenReplay { prepare_requested: true, .. } | Prepared { .. }, Command::Commit { tid, next: Some((n, Mode::Replay, true)) })
                if self.sealed && self.awaiting.front() == Some(tid) && *n > self.last_opened =>
            {
                let (t, n) = (*tid, *n);
                self.awaiting.pop_front();
                self.last_committed = t;
                let mut actions = vec![Action::Commit { tid: t }, Action::Report(Report::Committed { tid: t })];
                actions.extend(self.on_txn_command(Command::Start { tid: n, mode: Mode::Replay, prepare: true }));
                actions
            }
            (_, Command::Commit { tid, next: None }) if self.awaiting.front() == Some(tid) => {
                self.awaiting.pop_front();
                self.last_committed = *tid;
                vec![Action::Commit { tid: *tid }, Action::Report(Report::Committed { tid: *tid })]
            }
            (Prepared { tid: t } | PausedPrepared { tid: t }, Command::Commit { tid, next })
                if *tid == t && self.awaiting.is_empty() && next.is_none_or(|(n, _, _)| n > t) =>
            {
                self.state = Idle;
                self.last_committed = t;
                let mut actions = vec![Action::Commit { tid: t }, Action::Report(Report::Committed { tid: t })];
                if let Some((next_tid, mode, prepare)) = *next {
                    actions.extend(self.open(next_tid, mode, prepare));
                }
                actions
            }
            (state, command) => {
                let why = match (state, command) {
                    (Idle, Command::Start { tid, .. }) => format!(
                        "Start tid {tid} does not follow the highest tid opened since the last restore ({})",
                        self.last_opened
                    ),
                    (Idle, Command::Checkpoint { tid }) => format!(
                        "Checkpoint tid {tid} is not the last committed tid {}",
                        self.last_committed
                    ),
                    (_, Command::Checkpoint { .. }) => {
                        "checkpoints are taken only with no transaction open (invariant 5)".to_string()
                    }
                    (_, Command::Commit { tid, .. }) if !self.awaiting.is_empty() => format!(
                        "tids {:?} await their commit: inside a replay window or a commit pipeline commits come in \
                         tid order, and only a replay window's may carry a next Start (sealed, above {}) (got Commit \
                         tid {tid})",
                        self.awaiting, self.last_opened
                    ),
                    (OpenLive { .. }, Command::Prepare { next: Some((n, mode, prepare)), .. }) => format!(
                        "a pipelined Prepare must name a live next tid above {} (got tid {n}, {mode:?}, prepare {prepare})",
                        self.last_opened
                    ),
                    _ => "not allowed in this state".to_string(),
                };
                vec![self.protocol_error(command.tid(), format!("{command:?} in state {state}: {why}"))]
            }
        }
    }

    fn open(&mut self, tid: u64, mode: Mode, prepare: bool) -> Vec<Action> {
        self.last_opened = self.last_opened.max(tid);
        self.sealed = mode == Mode::Replay && prepare;
        self.state = match mode {
            Mode::Live => TxnState::OpenLive { tid },
            // A sealed replay behaves as if Prepare had already arrived.
            Mode::Replay => TxnState::OpenReplay { tid, prepare_requested: prepare },
        };
        vec![Action::OpenTxn { tid, mode }]
    }

    fn on_step_finished(
        &mut self,
        tid: u64,
        step: u64,
        checksums: EndpointChecksums,
        journaled: Option<EndpointChecksums>,
    ) -> Vec<Action> {
        let mode = match (self.state, &journaled) {
            (TxnState::OpenLive { tid: t }, None) if t == tid => Mode::Live,
            (_, Some(_)) if self.takes_replayed_step(tid) => Mode::Replay,
            (state, _) => {
                let kind = if journaled.is_some() { "replayed" } else { "live" };
                return self.internal_error(
                    tid,
                    format!("a {kind} step {step} of tid {tid} finished in state {state}, which asked for no such step"),
                );
            }
        };
        vec![Action::Report(Report::StepDone { tid, step, checksums, journaled, mode })]
    }

    fn on_replay_exhausted(&mut self, tid: u64, commit_marker: bool) -> Vec<Action> {
        match self.state {
            TxnState::OpenReplay { tid: t, prepare_requested: true } if t == tid => {
                self.state = TxnState::Prepared { tid };
                let mut actions = vec![Action::Prepare { tid }];
                // Replay window: the next committed tid is already started.
                if let Some(next) = self.ahead.pop_front() {
                    self.awaiting.push_back(tid);
                    actions.extend(self.open(next, Mode::Replay, true));
                }
                actions
            }
            TxnState::OpenReplay { tid: t, prepare_requested: false } if t == tid && commit_marker => {
                // The journal says T committed, so T must end exactly here
                // even though Prepare has not arrived yet.
                self.state = TxnState::ReplayDrained { tid };
                Vec::new()
            }
            TxnState::OpenReplay { tid: t, prepare_requested: false } if t == tid => {
                // DESIGN invariant 4, the open last transaction: T was begun
                // but never committed (the crash came mid-transaction). Its
                // journaled steps have been re-run and reported with their
                // journaled checksums for verification; now T continues live
                // with fresh step numbers and commits normally.
                self.state = TxnState::OpenLive { tid };
                Vec::new()
            }
            state => self.internal_error(
                tid,
                format!("the journaled steps of tid {tid} ran out in state {state}, which is replaying no such tid"),
            ),
        }
    }

    // ------------------------------------------------------------ helpers

    /// Leaves any transaction; the engine state is no longer trusted.
    fn stop(&mut self) -> Vec<Action> {
        let actions = match self.state.tid() {
            Some(tid) => vec![Action::AbandonTxn { tid }],
            None => Vec::new(),
        };
        self.state = TxnState::Stopped;
        self.sealed = false;
        self.ahead.clear();
        self.awaiting.clear();
        actions
    }

    fn protocol_error(&self, tid: u64, message: String) -> Action {
        Action::Report(Report::Error { kind: ErrorKind::Protocol, tid, message })
    }

    fn internal_error(&mut self, tid: u64, message: String) -> Vec<Action> {
        let mut actions = self.stop();
        actions.push(Action::Report(Report::Error { kind: ErrorKind::Internal, tid, message }));
        actions
    }

    /// A core in an arbitrary state with a welcomed stream, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(state: TxnState, highest_epoch: u64, last_committed: u64, last_opened: u64) -> Self {
        HostCore {
            state,
            highest_epoch,
            last_committed,
            last_opened,
            sealed: false,
            ahead: VecDeque::new(),
            awaiting: VecDeque::new(),
            stream: Some(StreamState { next_seq: 1, welcomed: true }),
        }
    }

    /// The same core inside a replay window: its open replay sealed, with
    /// tids queued ahead and tids awaiting their commit.
    #[cfg(test)]
    pub(crate) fn with_window(mut self, sealed: bool, ahead: &[u64], awaiting: &[u64]) -> Self {
        self.sealed = sealed;
        self.ahead = ahead.iter().copied().collect();
        self.awaiting = awaiting.iter().copied().collect();
        self
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
