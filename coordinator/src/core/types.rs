//! Plain-data inputs and outputs of the coordinator core: what hosts report,
//! what the core asks the shell to do, and the failure diagnosis.

use std::fmt;

use lockstep_journal::{Aggregate, Checksum};

pub use crate::ledger::{Epoch, HostId, LedgerEntry, LedgerError, Sums, Tid};

/// Identifies one host stream; a reconnecting host gets a new one.
pub type ConnId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Live,
    Replay,
}

/// A host's own transaction state, as it reports it with every step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostTxnState {
    Unspecified,
    Idle,
    OpenLive,
    OpenReplay,
    Prepared,
}

/// What a host's journal holds for one tid (from its Hello). A Hello lists
/// every tid after the host's newest checkpoint and the core keeps it for
/// the whole recovery, so the aggregate is kept compact: a [`Sums`] that is
/// the ledger's record itself when the two are equal (`wire::hello_from`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalTid {
    pub tid: Tid,
    pub first_step: u64,
    pub last_step: u64,
    pub steps: u64,
    pub aggregate: Sums,
    pub committed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u32,
    pub host_id: HostId,
    pub cluster_id: String,
    pub highest_epoch: Epoch,
    pub checkpoints: Vec<Tid>,
    pub journal: Vec<JournalTid>,
    pub last_step: u64,
    pub ingest_addr: String,
    /// Names the host's data directory (`Hello.data_id`); 0: not given.
    pub data_id: u64,
    /// What the host kept from its previous stream (see `Resumable`);
    /// `None`: nothing to continue from, only a restore helps.
    pub resumable: Option<Resumable>,
}

impl Hello {
    /// The journal's summary of `tid`. `journal` is in ascending tid order
    /// (`wire::hello_from` refuses a Hello that is not), so a replay of n
    /// tids looks up n summaries in O(n) (`index_of_tid`), not O(n^2).
    pub fn journaled(&self, tid: Tid) -> Option<&JournalTid> {
        let j = &self.journal;
        index_of_tid(tid, j.first().map(|f| f.tid), |i| j.get(i).map(|e| e.tid), || j.binary_search_by_key(&tid, |e| e.tid))
            .map(|i| &j[i])
    }
}

/// The index of `tid` among items in strictly ascending tid order (`first`
/// the first one's tid, `tid_at(i)` the i-th's, `search` a binary search).
/// Looked for first where it is when the tids from the first one on have
/// no gaps, which a replay's nearly always are; `search` only when that
/// misses. One or two lookups per host and tid sit in the coordinator's
/// hottest replay path, where binary searches over thousands of tids took
/// a quarter of its CPU (perf, 3000 tids).
pub(crate) fn index_of_tid(
    tid: Tid,
    first: Option<Tid>,
    tid_at: impl Fn(usize) -> Option<Tid>,
    search: impl FnOnce() -> Result<usize, usize>,
) -> Option<usize> {
    // Below the first tid (or no items): absent.
    let guess = usize::try_from(tid.checked_sub(first?)?).ok();
    match guess {
        Some(g) if tid_at(g) == Some(tid) => Some(g),
        _ => search().ok(),
    }
}

/// A host's engine state when its previous coordinator stream ended
/// (`Hello.resumable`): a new leader, or a restarted coordinator, continues
/// from it without a restore when every host's fits the ledger
/// (`resume::plan`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resumable {
    pub last_committed: Tid,
    /// `Idle`, `OpenLive` or `Prepared`; anything else cannot be continued.
    pub state: HostTxnState,
    /// The open or prepared tid (0 when idle).
    pub tid: Tid,
    /// Steps the host ran in `tid` and their input aggregate.
    pub steps: u64,
    pub aggregate: Aggregate,
    /// When prepared: the report the host sent for `tid`.
    pub prepared: Option<PreparedReport>,
    /// Commit pipeline: the reports of the tids before `tid` the host
    /// prepared and holds, awaiting their commit, oldest first.
    pub awaiting: Vec<PreparedReport>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    pub tid: Tid,
    pub step: u64,
    pub checksums: Aggregate,
    /// During replay: what the journal recorded for this step.
    pub journaled: Option<Aggregate>,
    pub state: HostTxnState,
    pub mode: Mode,
}

/// A host's replayed steps of one tid, as they travel (an entry of a
/// `ReplayedTids`, in columns), shape already checked by the wire layer:
/// the reports
/// `StepReport{tid, steps[i], .., OpenReplay, Replay}` for each step, then
/// `prepared`. Kept in columns so that the core checks a replayed step
/// without building two maps for it (`Core::on_replayed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayedBatch {
    pub tid: Tid,
    /// The report's endpoint table, shared by all the tids it carries.
    pub endpoints: std::sync::Arc<[String]>,
    pub steps: Vec<u64>,
    /// What the engine ingested: row `i` (step `steps[i]`) at
    /// `i * endpoints.len()..`, one entry per endpoint; `None`, the step
    /// has no checksum for that endpoint.
    pub replayed: Vec<Option<Checksum>>,
    /// What the journal recorded, laid out as `replayed`; `None` when it
    /// is exactly `replayed` (the host sent `journaled_as_replayed`).
    pub journaled: Option<Vec<Option<Checksum>>>,
    pub prepared: Option<PreparedReport>,
}

impl ReplayedBatch {
    /// Row `i` of both sides: (replayed, journaled).
    pub fn row(&self, i: usize) -> (&[Option<Checksum>], &[Option<Checksum>]) {
        let n = self.endpoints.len();
        let journaled = self.journaled.as_deref().unwrap_or(&self.replayed);
        (&self.replayed[i * n..(i + 1) * n], &journaled[i * n..(i + 1) * n])
    }

    /// The single report step `i` stands for.
    pub fn step_report(&self, i: usize) -> StepReport {
        let (replayed, journaled) = self.row(i);
        let side = |row: &[Option<Checksum>]| -> Aggregate {
            self.endpoints.iter().zip(row).filter_map(|(e, c)| c.map(|c| (e.clone(), c))).collect()
        };
        StepReport {
            tid: self.tid,
            step: self.steps[i],
            checksums: side(replayed),
            journaled: Some(side(journaled)),
            state: HostTxnState::OpenReplay,
            mode: Mode::Replay,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedReport {
    pub tid: Tid,
    pub steps: u64,
    pub aggregate: Aggregate,
    pub output_digest: u64,
    pub output_count: u64,
}

/// Everything that can happen to the core. Time comes with every call.
#[derive(Clone, Debug)]
pub enum Event {
    /// A stream opened and sent its Hello.
    Hello { conn: ConnId, hello: Hello },
    /// A stream ended (or the shell dropped it).
    Disconnected { conn: ConnId, host: HostId, reason: String },
    Step { host: HostId, report: StepReport },
    /// Replayed steps of one tid and maybe its Prepared, in one report:
    /// exactly what their single `Step`s and `Prepared` would do.
    Replayed { host: HostId, batch: ReplayedBatch },
    Prepared { host: HostId, report: PreparedReport },
    Committed { host: HostId, tid: Tid },
    CheckpointDone { host: HostId, tid: Tid },
    Restored { host: HostId, checkpoint: Tid },
    HostError { host: HostId, kind: String, message: String, tid: Tid },
    Heartbeat { host: HostId },
    /// A proposed ledger entry was committed and applied (or rejected by the
    /// ledger's rules, identically on every replica).
    Applied { entry: LedgerEntry, result: Result<(), LedgerError> },
    /// The replicated log did not accept the proposal (I/O, not leader).
    ProposeFailed { entry: LedgerEntry, error: String },
    /// Timers: the shell calls this periodically.
    Tick,
    AdminCheckpoint,
    AdminStop { reason: String },
    AdminResume,
}

/// Opening a transaction on the hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub tid: Tid,
    pub mode: Mode,
    /// Replay of a tid the ledger already committed: it ends at exactly the
    /// journaled boundary, as if Prepare came with the Start.
    pub prepare: bool,
}

impl Start {
    pub fn live(tid: Tid) -> Start {
        Start { tid, mode: Mode::Live, prepare: false }
    }
    /// The open last transaction: replay, then continue live until Prepare.
    pub fn replay_open(tid: Tid) -> Start {
        Start { tid, mode: Mode::Replay, prepare: false }
    }
    /// A committed transaction: replay exactly the journaled steps.
    pub fn replay_committed(tid: Tid) -> Start {
        Start { tid, mode: Mode::Replay, prepare: true }
    }
}

/// A command for one host; the shell numbers it and stamps the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    Start(Start),
    /// `next`: the commit pipeline's next live tid, begun in the ledger;
    /// hosts open it as soon as they have prepared `tid`.
    Prepare { tid: Tid, next: Option<Start> },
    Commit { tid: Tid, next: Option<Start> },
    Checkpoint { tid: Tid },
    CheckpointComplete { tid: Tid },
    Restore { checkpoint: Tid },
    Stop { reason: String },
}

/// Things worth telling operators (logs, progress output, event stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    PipelineState { from: String, to: String, why: String },
    HostJoined { host: HostId },
    HostLost { host: HostId, why: String },
    Committed { tid: Tid, replayed: bool, records: u64 },
    CheckpointComplete { tid: Tid },
    Recovering { epoch: Epoch, checkpoint: Tid, replay_tids: Vec<Tid>, open_tid: Option<Tid> },
    /// Every host is back and the epoch is bumped: how the pipeline goes on.
    Recovery(Recovery),
    Failed(Diagnosis),
}

/// How a new epoch picks up the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryPath {
    /// Every host kept a state that fits the ledger: no restore, no replay.
    Continue,
    /// Restore the newest complete checkpoint and replay what follows it.
    Replay,
}

impl RecoveryPath {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecoveryPath::Continue => "continue",
            RecoveryPath::Replay => "replay",
        }
    }
}

/// The path a new epoch took and why, for logs and the Admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub epoch: Epoch,
    pub path: RecoveryPath,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send { host: HostId, epoch: Epoch, cmd: Cmd },
    /// Accept a stream as `host`; the shell answers with Welcome.
    Accept { conn: ConnId, host: HostId },
    /// Refuse a stream with this error (the shell closes it with a status).
    Reject { conn: ConnId, error: String },
    /// Close a host's current stream (it missed its deadline, or a newer
    /// stream of the same host replaced it).
    Drop { conn: ConnId, host: HostId, why: String },
    Propose(LedgerEntry),
    Notice(Notice),
}

/// A precise, operator-actionable description of why the pipeline stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnosis {
    pub summary: String,
    pub host: Option<HostId>,
    pub tid: Option<Tid>,
    pub step: Option<u64>,
    pub endpoint: Option<String>,
    pub expected: Option<String>,
    pub actual: Option<String>,
    pub hint: String,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.summary)?;
        if let Some(h) = &self.host {
            write!(f, "; host {h}")?;
        }
        if let Some(t) = self.tid {
            write!(f, "; tid {t}")?;
        }
        if let Some(s) = self.step {
            write!(f, "; step {s}")?;
        }
        if let Some(e) = &self.endpoint {
            write!(f, "; endpoint {e:?}")?;
        }
        if let Some(e) = &self.expected {
            write!(f, "; expected {e}")?;
        }
        if let Some(a) = &self.actual {
            write!(f, "; actual {a}")?;
        }
        if !self.hint.is_empty() {
            write!(f, ". What to do: {}", self.hint)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever the gaps, the lookup agrees with a binary search.
        #[test]
        fn index_of_tid_finds_exactly_what_a_binary_search_finds(
            tids in proptest::collection::btree_set(0u64..64, 0..24),
            tid in 0u64..70,
        ) {
            let tids: Vec<Tid> = tids.into_iter().collect();
            let found = index_of_tid(tid, tids.first().copied(), |i| tids.get(i).copied(), || tids.binary_search(&tid));
            proptest::prop_assert_eq!(found, tids.binary_search(&tid).ok());
        }
    }
}
