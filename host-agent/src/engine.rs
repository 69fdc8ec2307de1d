//! The `Engine` trait: the seam between the Lockstep host agent and a
//! streaming engine, plus the input, output and error types that cross it.
//!
//! The agent owns transactions, the journal, the coordinator session and the
//! sink; the engine owns its state and its operators. Per step the agent asks
//! the engine for input (`next_input`), makes that input durable in the
//! journal, tells the engine so (`input_durable`, which is when acknowledging
//! sources may acknowledge), and only then runs the step (`step`). In replay
//! the agent feeds journaled inputs to `step` directly; `next_input` is not
//! called. The engine therefore never has to know whether a step is live or
//! replayed, except through `StepContext::replay` (for diagnostics and fault
//! injection).
//!
//! Every method runs on the agent's own task, one at a time, never
//! concurrently: `&mut self` is the whole synchronisation story.
//! `checkpoint` and `restore` run on a blocking thread (they do file I/O);
//! the others run inline and should be short (bounded by the step's batch).

use lockstep_journal::{Checksum, EndpointChecksums};
use std::path::{Path, PathBuf};

/// Where a step happens, as far as the engine needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepContext {
    /// The transaction the step belongs to.
    pub tid: u64,
    /// The host's step number (strictly increasing per host, across restarts).
    pub step: u64,
    /// True when re-running a journaled step after a restore.
    pub replay: bool,
}

/// How to regenerate a deterministic source's records instead of journaling
/// them: the journal keeps these three numbers, the engine re-derives the
/// records on replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneratorRef {
    pub seed: u64,
    pub offset: u64,
    pub count: u64,
}

/// How one endpoint's records of one step are journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The records themselves, encoded by the engine (pushed input).
    Value(Vec<u8>),
    /// A reference the engine can regenerate the records from.
    Reference(GeneratorRef),
}

/// One endpoint's input of one step: the payload and the checksum of the
/// records it stands for (what the journal and the coordinator compare).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInput {
    pub endpoint: String,
    pub checksum: Checksum,
    pub payload: Payload,
}

/// The input of one step, one entry per endpoint. Every endpoint the engine
/// has should be present in every step, even with zero records, so that
/// journaled and replayed checksums always have the same set of endpoints
/// (an endpoint present on one side only is a divergence).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepInput {
    pub endpoints: Vec<EndpointInput>,
}

impl StepInput {
    /// The per-endpoint checksums this input claims for itself.
    pub fn checksums(&self) -> EndpointChecksums {
        self.endpoints.iter().map(|e| (e.endpoint.clone(), e.checksum)).collect()
    }

    /// Total records over all endpoints.
    pub fn record_count(&self) -> u64 {
        self.endpoints.iter().map(|e| e.checksum.count).sum()
    }
}

/// One output row of a transaction. `canonical` is the JSON value written to
/// the sink; its serialized bytes are what the output digest hashes, so an
/// engine must build rows deterministically (same fields, same order).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputRow(pub serde_json::Value);

impl OutputRow {
    /// The bytes hashed into the output digest.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serializing a `Value` cannot fail (no non-string map keys).
        serde_json::to_vec(&self.0).unwrap_or_default()
    }
}

/// The output digest of a set of rows: `(row count, multiset hash)`,
/// independent of row order.
pub fn output_digest(rows: &[OutputRow]) -> Checksum {
    let mut digest = Checksum::EMPTY;
    for row in rows {
        digest.add_record(&row.canonical_bytes());
    }
    digest
}

/// An engine failure. The agent reports it to the coordinator as
/// `HostError{kind:"engine"}` and stops; the coordinator recovers.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Journaled input the engine cannot decode (corrupt or from another
    /// engine version).
    #[error("bad journaled input for endpoint {endpoint:?}: {reason}")]
    BadInput { endpoint: String, reason: String },
    /// A checkpoint that cannot be read back.
    #[error("bad checkpoint {path}: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

/// A streaming engine embedded in the Lockstep host agent.
///
/// Contract, in the order the agent calls things:
/// 1. `restore(None | Some(checkpoint))` before any step (the coordinator
///    always sends `Restore` first).
/// 2. Live step: `next_input` → (agent journals it durably) →
///    `input_durable` → `step` with that same input.
///    Replay step: `step` with the journaled input.
/// 3. At prepare: `take_outputs(tid)` returns the rows of every step of
///    `tid` since the previous `take_outputs`; the agent hashes them into the
///    output digest and holds them until the commit.
/// 4. Between transactions only: `checkpoint(dir, tid)`.
///
/// `step` must return the checksums of what it actually ingested, computed
/// from the materialised records (not copied from the input): in replay the
/// coordinator compares them with the journaled ones, and that comparison is
/// what catches a non-deterministic source.
pub trait Engine: Send + 'static {
    /// The endpoint names this engine reads from.
    fn endpoints(&self) -> Vec<String>;

    /// Takes the next live input batch (may be empty). Called only in a live
    /// transaction, immediately before the agent journals the batch.
    fn next_input(&mut self, ctx: &StepContext) -> Result<StepInput, EngineError>;

    /// The input last returned by `next_input` is durable in the journal as
    /// `(tid, step)`; acknowledging sources may acknowledge it now. If the
    /// journal append fails this is not called, and the next `next_input`
    /// call (or a `restore`) must treat the batch as not taken.
    fn input_durable(&mut self, tid: u64, step: u64) {
        let _ = (tid, step);
    }

    /// Materialises the records of `input` (regenerating by-reference
    /// payloads), processes them, and returns the checksums of the records
    /// actually ingested, one entry per endpoint of `input`.
    fn step(&mut self, ctx: &StepContext, input: &StepInput) -> Result<EndpointChecksums, EngineError>;

    /// The output rows of transaction `tid` (all its steps so far).
    fn take_outputs(&mut self, tid: u64) -> Vec<OutputRow>;

    /// Extra fields written next to the rows of each committed tid in the
    /// sink (e.g. a generator's offset, so tests can recompute expectations).
    /// Taken together with the tid's outputs, right after `take_outputs`:
    /// by the tid's commit the engine may already run later tids.
    fn output_metadata(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    /// Writes the engine state durably under `dir` (write a temporary file,
    /// fsync, rename, fsync the directory) as checkpoint `tid` and returns
    /// its path. Called only with no transaction open.
    fn checkpoint(&mut self, dir: &Path, tid: u64) -> Result<PathBuf, EngineError>;

    /// Replaces the engine state with `checkpoint`, or with the empty
    /// initial state for `None`.
    fn restore(&mut self, checkpoint: Option<&Path>) -> Result<(), EngineError>;
}
