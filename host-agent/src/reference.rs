//! The reference engine: sharded keyed aggregation (count and sum per key)
//! over two endpoints, plus its push-ingest gRPC service.
//!
//! - `generator`: a seeded deterministic generator, journaled by reference
//!   (seed, offset, count). Record `offset` of host `h` is
//!   `generate(seed, h, offset)`, a pure function, so a test can recompute
//!   every record a host ever ingested from the seed and the sink's
//!   `generator_offset`. The batch size per step varies with the step number
//!   (0..=batch_max), so steps per transaction differ between hosts.
//! - `push`: records pushed through `lockstep.v1.Ingest/Push`, journaled by
//!   value. A push is acknowledged with its (step, tid) only once the step
//!   carrying it is durable in the journal (`Engine::input_durable`).
//!
//! Each host aggregates only the records it ingests (its shard). Output of
//! a tid: one row per key updated in that tid, with the key's new running
//! (count, sum). A checkpoint is the whole state as JSON.
//!
//! The test-only fault `fault_nondeterministic_replay` drops the last
//! generator record of the first replayed step that has one, as if the
//! generator had re-sharded on replay, so the coordinator's divergence
//! diagnosis can be exercised.

use crate::engine::{
    EndpointInput, Engine, EngineError, GeneratorRef, OutputRow, Payload, StepContext, StepInput,
};
use lockstep_journal::{record_hash, Checksum, EndpointChecksums};
use lockstep_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

pub const GENERATOR_ENDPOINT: &str = "generator";
pub const PUSH_ENDPOINT: &str = "push";

/// Distinct keys the generator draws from ("key-00" .. "key-63").
pub const GENERATOR_KEYS_MAX: u64 = 64;
/// Records pushed but not yet taken into a step, over all waiting pushes.
pub const PUSH_QUEUED_RECORDS_MAX: usize = 100_000;
/// Records of one Push request; a request is journaled whole in one step.
pub const PUSH_REQUEST_RECORDS_MAX: usize = 10_000;
/// Records taken from the push queue into one step (whole requests only;
/// always at least one request).
pub const PUSH_STEP_RECORDS_MAX: usize = 10_000;
/// Longest key accepted by Push.
pub const PUSH_KEY_BYTES_MAX: usize = 1024;
/// Largest Push request the ingest server reads: room for
/// `PUSH_REQUEST_RECORDS_MAX` records with keys of `PUSH_KEY_BYTES_MAX`
/// (~10.3 MB; tonic's default of 4 MiB refused requests inside those
/// limits), and no more than the journal takes in one record by default
/// (`JournalOptions::record_bytes_max`; a test keeps the two in step).
pub const PUSH_REQUEST_BYTES_MAX: usize = 16 << 20;
/// Version of the checkpoint file format.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// How long a Push waits for a live step to take its records, by default
/// (`ReferenceConfig::push_wait`): long enough for a leader change or a
/// recovery, short enough that a client with no deadline of its own hears
/// about a host that is cut off from its pipeline.
pub const PUSH_WAIT_DEFAULT: Duration = Duration::from_secs(30);

/// Configuration of the reference engine of one host.
#[derive(Clone, Debug)]
pub struct ReferenceConfig {
    pub host_id: String,
    pub generator_seed: u64,
    /// Largest generator batch per step (batch sizes vary in 0..=max).
    pub generator_batch_max: u64,
    /// Test-only: make replay diverge (see the module docs).
    pub fault_nondeterministic_replay: bool,
    /// How long a Push waits for a live step to take its records before
    /// they are withdrawn and the client is told so (`PUSH_WAIT_DEFAULT`).
    pub push_wait: Duration,
}

// ---------------------------------------------------------------- generator

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Record number `offset` of host `host_id`'s generator with `seed`: a key
/// among `GENERATOR_KEYS_MAX` and a value in -1000..=1000. Pure and stable:
/// part of the journal format (by-reference input is regenerated with it).
pub fn generate(seed: u64, host_id: &str, offset: u64) -> (String, i64) {
    let h = splitmix64(seed ^ splitmix64(fnv1a(host_id.as_bytes()) ^ splitmix64(offset)));
    let key = format!("key-{:02}", h % GENERATOR_KEYS_MAX);
    let value = ((h >> 32) % 2001) as i64 - 1000;
    (key, value)
}

/// Generator records in live step `step` of host `host_id`: 0..=batch_max.
pub fn batch_size(seed: u64, host_id: &str, step: u64, batch_max: u64) -> u64 {
    let h = splitmix64(seed ^ fnv1a(host_id.as_bytes()) ^ splitmix64(step ^ 0x0ba7_c4e5));
    h % (batch_max.saturating_add(1)).max(1)
}

/// Canonical bytes of one record (what the step checksum hashes): key
/// length (u32 LE), key bytes, value (i64 LE).
pub fn record_bytes(key: &str, value: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + key.len());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&value.to_le_bytes());
    out
}

/// The step checksum of some records.
pub fn checksum_of<'a>(records: impl IntoIterator<Item = (&'a str, i64)>) -> Checksum {
    let mut c = Checksum::EMPTY;
    for (k, v) in records {
        c.add_hashed(record_hash(&record_bytes(k, v)));
    }
    c
}

// ---------------------------------------------------------------- push queue

struct PendingPush {
    /// Names the request in the queue, so that it can be withdrawn.
    id: u64,
    records: Vec<(String, i64)>,
    ack: oneshot::Sender<(u64, u64)>,
}

#[derive(Default)]
struct PushQueue {
    queue: VecDeque<PendingPush>,
    queued_records: usize,
    next_id: u64,
}

impl PushQueue {
    /// Takes push `id` out of the queue if no step has taken it yet;
    /// `false` if one has (its records are being journaled).
    fn withdraw(&mut self, id: u64) -> bool {
        let Some(i) = self.queue.iter().position(|p| p.id == id) else { return false };
        let p = self.queue.remove(i).expect("found above");
        self.queued_records -= p.records.len();
        true
    }
}

/// Withdraws a waiting push whose handler ends before a step took it: its
/// client gave up (cancelled, or its own deadline passed), and records
/// nobody waits for must neither be ingested unacknowledged nor hold
/// queue room.
struct WithdrawOnDrop<'a> {
    queue: &'a Mutex<PushQueue>,
    id: u64,
    armed: bool,
}

impl WithdrawOnDrop<'_> {
    /// The push's outcome is settled (a step took it): nothing to withdraw.
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Withdraws the push now (`PushQueue::withdraw`); either way there is
    /// nothing left for the drop to do.
    fn withdraw(&mut self) -> bool {
        self.disarm();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).withdraw(self.id)
    }
}

impl Drop for WithdrawOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.withdraw();
        }
    }
}

/// The `lockstep.v1.Ingest` service of one reference engine.
#[derive(Clone)]
pub struct IngestService {
    host_id: String,
    queue: Arc<Mutex<PushQueue>>,
    wait: Duration,
}

#[tonic::async_trait]
impl v1::ingest_server::Ingest for IngestService {
    async fn push(&self, request: tonic::Request<v1::PushRequest>) -> Result<tonic::Response<v1::PushResponse>, tonic::Status> {
        let records = request.into_inner().records;
        if records.is_empty() {
            return Err(tonic::Status::invalid_argument("Push carries no records"));
        }
        if records.len() > PUSH_REQUEST_RECORDS_MAX {
            return Err(tonic::Status::invalid_argument(format!(
                "Push carries {} records; at most {PUSH_REQUEST_RECORDS_MAX} per request, split it",
                records.len()
            )));
        }
        if let Some(r) = records.iter().find(|r| r.key.len() > PUSH_KEY_BYTES_MAX) {
            return Err(tonic::Status::invalid_argument(format!(
                "a key of {} bytes exceeds the {PUSH_KEY_BYTES_MAX}-byte limit",
                r.key.len()
            )));
        }
        let (tx, mut rx) = oneshot::channel();
        let id = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.queued_records + records.len() > PUSH_QUEUED_RECORDS_MAX {
                return Err(tonic::Status::resource_exhausted(format!(
                    "host {}: {} pushed records are waiting for a live transaction (limit {PUSH_QUEUED_RECORDS_MAX}); retry later",
                    self.host_id, q.queued_records
                )));
            }
            q.next_id += 1;
            let id = q.next_id;
            q.queued_records += records.len();
            q.queue.push_back(PendingPush { id, records: records.into_iter().map(|r| (r.key, r.value)).collect(), ack: tx });
            id
        };
        let mut guard = WithdrawOnDrop { queue: &self.queue, id, armed: true };
        let taken = match tokio::time::timeout(self.wait, &mut rx).await {
            Ok(taken) => taken,
            // Withdrawn unless a step took the records at the last moment;
            // then they are being journaled and their outcome is awaited.
            Err(_) if guard.withdraw() => {
                return Err(tonic::Status::unavailable(format!(
                    "host {}: no live transaction took these records within {:?}; they were withdrawn, not ingested. \
                     The host is not connected to a running pipeline (see Admin/GetStatus and the host's log); push them again",
                    self.host_id, self.wait
                )));
            }
            Err(_) => rx.await,
        };
        guard.disarm();
        match taken {
            Ok((step, tid)) => Ok(tonic::Response::new(v1::PushResponse { step, tid })),
            Err(_) => Err(tonic::Status::unavailable(format!(
                "host {}: the step carrying these records was not journaled (the host stopped, restored or its journal failed); they were not acknowledged, push them again",
                self.host_id
            ))),
        }
    }
}

// ---------------------------------------------------------------- engine

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct KeyAgg {
    count: u64,
    sum: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// Next generator record offset (all before it are ingested).
    generator_offset: u64,
    keys: BTreeMap<String, KeyAgg>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    format_version: u32,
    host_id: String,
    tid: u64,
    state: State,
}

pub struct ReferenceEngine {
    cfg: ReferenceConfig,
    state: State,
    /// Keys updated since the last `take_outputs`.
    touched: BTreeSet<String>,
    queue: Arc<Mutex<PushQueue>>,
    /// Pushes taken by the last `next_input`, acknowledged once durable.
    in_flight: Vec<PendingPush>,
    fault_armed: bool,
}

impl ReferenceEngine {
    pub fn new(cfg: ReferenceConfig) -> Self {
        let fault_armed = cfg.fault_nondeterministic_replay;
        ReferenceEngine {
            cfg,
            state: State::default(),
            touched: BTreeSet::new(),
            queue: Arc::default(),
            in_flight: Vec::new(),
            fault_armed,
        }
    }

    /// The push-ingest gRPC service feeding this engine.
    pub fn ingest_service(&self) -> v1::ingest_server::IngestServer<IngestService> {
        v1::ingest_server::IngestServer::new(self.ingest_handle())
            .max_decoding_message_size(PUSH_REQUEST_BYTES_MAX)
    }

    /// The Ingest service itself, for calling it in-process.
    pub fn ingest_handle(&self) -> IngestService {
        IngestService { host_id: self.cfg.host_id.clone(), queue: self.queue.clone(), wait: self.cfg.push_wait }
    }

    /// The next generator offset (all records before it are ingested).
    pub fn generator_offset(&self) -> u64 {
        self.state.generator_offset
    }

    /// Current (count, sum) of `key`.
    pub fn get(&self, key: &str) -> Option<(u64, i64)> {
        self.state.keys.get(key).map(|a| (a.count, a.sum))
    }

    fn apply(&mut self, key: &str, value: i64) {
        let agg = self.state.keys.entry(key.to_string()).or_default();
        agg.count += 1;
        agg.sum = agg.sum.wrapping_add(value);
        if !self.touched.contains(key) {
            self.touched.insert(key.to_string());
        }
    }

    fn generator_step(&mut self, ctx: &StepContext, r: &GeneratorRef) -> Result<Checksum, EngineError> {
        if r.offset != self.state.generator_offset {
            return Err(EngineError::BadInput {
                endpoint: GENERATOR_ENDPOINT.into(),
                reason: format!(
                    "step {} of tid {} starts at generator offset {}, but the engine state is at offset {}; the checkpoint and the journal disagree",
                    ctx.step, ctx.tid, r.offset, self.state.generator_offset
                ),
            });
        }
        let mut end = r.offset + r.count;
        if ctx.replay && self.fault_armed && r.count > 0 {
            // Injected fault: the last record "moved to another shard".
            self.fault_armed = false;
            end -= 1;
            tracing::warn!(tid = ctx.tid, step = ctx.step, "fault injection: dropping generator record {end} on replay");
        }
        let mut c = Checksum::EMPTY;
        for offset in r.offset..end {
            let (key, value) = generate(r.seed, &self.cfg.host_id, offset);
            c.add_hashed(record_hash(&record_bytes(&key, value)));
            self.apply(&key, value);
        }
        self.state.generator_offset = r.offset + r.count;
        Ok(c)
    }

    fn push_step(&mut self, bytes: &[u8]) -> Result<Checksum, EngineError> {
        let req = v1::PushRequest::decode(bytes).map_err(|e| EngineError::BadInput {
            endpoint: PUSH_ENDPOINT.into(),
            reason: format!("journaled push payload does not decode: {e}"),
        })?;
        let mut c = Checksum::EMPTY;
        for r in &req.records {
            c.add_hashed(record_hash(&record_bytes(&r.key, r.value)));
            self.apply(&r.key, r.value);
        }
        Ok(c)
    }

    fn take_pushes(&mut self) -> Vec<PendingPush> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken: Vec<PendingPush> = Vec::new();
        let mut records = 0;
        while let Some(front) = q.queue.front() {
            if !taken.is_empty() && records + front.records.len() > PUSH_STEP_RECORDS_MAX {
                break;
            }
            let p = q.queue.pop_front().expect("front exists");
            q.queued_records -= p.records.len();
            // A push whose handler is gone has withdrawn itself
            // (`WithdrawOnDrop`); should one still be found, nobody waits
            // for its acknowledgement, so it is dropped, not ingested.
            if p.ack.is_closed() {
                continue;
            }
            records += p.records.len();
            taken.push(p);
        }
        taken
    }
}

impl Engine for ReferenceEngine {
    fn endpoints(&self) -> Vec<String> {
        vec![GENERATOR_ENDPOINT.into(), PUSH_ENDPOINT.into()]
    }

    fn next_input(&mut self, ctx: &StepContext) -> Result<StepInput, EngineError> {
        // Pushes taken last time but never journaled: their clients get an
        // error (sender dropped) and may retry.
        self.in_flight.clear();
        let seed = self.cfg.generator_seed;
        let count = batch_size(seed, &self.cfg.host_id, ctx.step, self.cfg.generator_batch_max);
        let offset = self.state.generator_offset;
        let generated: Vec<(String, i64)> = (offset..offset + count).map(|o| generate(seed, &self.cfg.host_id, o)).collect();
        let generator = EndpointInput {
            endpoint: GENERATOR_ENDPOINT.into(),
            checksum: checksum_of(generated.iter().map(|(k, v)| (k.as_str(), *v))),
            payload: Payload::Reference(GeneratorRef { seed, offset, count }),
        };
        self.in_flight = self.take_pushes();
        let records: Vec<v1::Record> = self
            .in_flight
            .iter()
            .flat_map(|p| p.records.iter().map(|(key, value)| v1::Record { key: key.clone(), value: *value }))
            .collect();
        let push = EndpointInput {
            endpoint: PUSH_ENDPOINT.into(),
            checksum: checksum_of(records.iter().map(|r| (r.key.as_str(), r.value))),
            payload: Payload::Value(v1::PushRequest { records }.encode_to_vec()),
        };
        Ok(StepInput { endpoints: vec![generator, push] })
    }

    fn input_durable(&mut self, tid: u64, step: u64) {
        for p in self.in_flight.drain(..) {
            // The client may have gone away; the records are ingested anyway.
            let _ = p.ack.send((step, tid));
        }
    }

    fn step(&mut self, ctx: &StepContext, input: &StepInput) -> Result<EndpointChecksums, EngineError> {
        let mut out = EndpointChecksums::new();
        for e in &input.endpoints {
            let c = match (e.endpoint.as_str(), &e.payload) {
                (GENERATOR_ENDPOINT, Payload::Reference(r)) => self.generator_step(ctx, r)?,
                (PUSH_ENDPOINT, Payload::Value(bytes)) => self.push_step(bytes)?,
                (endpoint, payload) => {
                    return Err(EngineError::BadInput {
                        endpoint: endpoint.into(),
                        reason: format!(
                            "the reference engine has no endpoint {endpoint:?} taking a {} payload",
                            if matches!(payload, Payload::Value(_)) { "by-value" } else { "by-reference" }
                        ),
                    })
                }
            };
            out.add(&e.endpoint, c);
        }
        Ok(out)
    }

    fn take_outputs(&mut self, _tid: u64) -> Vec<OutputRow> {
        let touched = std::mem::take(&mut self.touched);
        touched
            .into_iter()
            .map(|key| {
                let agg = self.state.keys.get(&key).copied().unwrap_or_default();
                OutputRow(serde_json::json!({"key": key, "count": agg.count, "sum": agg.sum}))
            })
            .collect()
    }

    fn output_metadata(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("generator_offset".into(), self.state.generator_offset.into());
        m
    }

    fn checkpoint(&mut self, dir: &Path, tid: u64) -> Result<PathBuf, EngineError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EngineError::Io { path: path.clone(), source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(format!("reference-{tid:020}.json"));
        let file = CheckpointFile {
            format_version: CHECKPOINT_FORMAT_VERSION,
            host_id: self.cfg.host_id.clone(),
            tid,
            state: self.state.clone(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| EngineError::Other(format!("serializing checkpoint {tid}: {e}")))?;
        crate::fsutil::write_atomic(&path, &bytes).map_err(io(&path))?;
        Ok(path)
    }

    fn restore(&mut self, checkpoint: Option<&Path>) -> Result<(), EngineError> {
        self.in_flight.clear();
        self.touched.clear();
        let Some(path) = checkpoint else {
            self.state = State::default();
            return Ok(());
        };
        let bytes = std::fs::read(path).map_err(|source| EngineError::Io { path: path.into(), source })?;
        let bad = |reason: String| EngineError::BadCheckpoint { path: path.into(), reason };
        let file: CheckpointFile = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a reference checkpoint: {e}")))?;
        if file.format_version != CHECKPOINT_FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} found, this build reads version {CHECKPOINT_FORMAT_VERSION}",
                file.format_version
            )));
        }
        if file.host_id != self.cfg.host_id {
            return Err(bad(format!(
                "written by host {:?}, but this is host {:?}; was a data directory copied between hosts?",
                file.host_id, self.cfg.host_id
            )));
        }
        self.state = file.state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::output_digest;

    /// The largest valid Push request fits the ingest server's limit, and
    /// that limit fits one journal record: a request it reads is never
    /// refused by the journal for its size.
    #[test]
    fn push_size_limits_fit_each_other() {
        use prost::Message;
        let key = "k".repeat(PUSH_KEY_BYTES_MAX);
        let records = (0..PUSH_REQUEST_RECORDS_MAX as i64).map(|value| v1::Record { key: key.clone(), value: i64::MIN + value }).collect();
        let largest = v1::PushRequest { records }.encoded_len();
        assert!(largest <= PUSH_REQUEST_BYTES_MAX, "{largest} > {PUSH_REQUEST_BYTES_MAX}");
        let journal = lockstep_journal::JournalOptions::default().record_bytes_max as usize;
        assert!(PUSH_REQUEST_BYTES_MAX <= journal, "{PUSH_REQUEST_BYTES_MAX} > {journal}");
    }

    fn cfg(host: &str) -> ReferenceConfig {
        ReferenceConfig {
            host_id: host.into(),
            generator_seed: 42,
            generator_batch_max: 20,
            fault_nondeterministic_replay: false,
            push_wait: PUSH_WAIT_DEFAULT,
        }
    }

    /// Runs `steps` live steps of tid 1 (no journal: the engine alone).
    fn run_live(engine: &mut ReferenceEngine, first_step: u64, steps: u64, tid: u64) -> Vec<StepInput> {
        (first_step..first_step + steps)
            .map(|step| {
                let ctx = StepContext { tid, step, replay: false };
                let input = engine.next_input(&ctx).unwrap();
                engine.input_durable(tid, step);
                let got = engine.step(&ctx, &input).unwrap();
                assert_eq!(got, input.checksums(), "live: ingested exactly what was journaled");
                input
            })
            .collect()
    }

    #[test]
    fn generator_is_pure_and_host_specific() {
        assert_eq!(generate(42, "h1", 7), generate(42, "h1", 7));
        let a: Vec<_> = (0..50).map(|o| generate(42, "h1", o)).collect();
        let b: Vec<_> = (0..50).map(|o| generate(42, "h2", o)).collect();
        let c: Vec<_> = (0..50).map(|o| generate(43, "h1", o)).collect();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|(k, v)| k.starts_with("key-") && (-1000..=1000).contains(v)));
        // Pinned values: the generator is part of the journal format (by-
        // reference input is regenerated with it), so it must never change.
        assert_eq!(generate(42, "h1", 0), ("key-19".to_string(), 92));
        let sizes: BTreeSet<u64> = (1..200).map(|s| batch_size(42, "h1", s, 20)).collect();
        assert!(sizes.len() > 5 && sizes.iter().all(|s| *s <= 20), "batch sizes vary within 0..=max: {sizes:?}");
        assert_eq!(batch_size(42, "h1", 5, 0), 0);
    }

    #[test]
    fn state_can_be_recomputed_from_the_seed_alone() {
        let mut engine = ReferenceEngine::new(cfg("h1"));
        engine.restore(None).unwrap();
        run_live(&mut engine, 1, 30, 1);
        let n = engine.generator_offset();
        assert!(n > 0);
        let mut expected: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        for o in 0..n {
            let (k, v) = generate(42, "h1", o);
            let e = expected.entry(k).or_default();
            e.0 += 1;
            e.1 += v;
        }
        for (k, (count, sum)) in &expected {
            assert_eq!(engine.get(k), Some((*count, *sum)), "key {k}");
        }
    }

    #[test]
    fn replay_of_journaled_inputs_reproduces_checksums_outputs_and_state() {
        let mut live = ReferenceEngine::new(cfg("h1"));
        live.restore(None).unwrap();
        let inputs = run_live(&mut live, 1, 12, 1);
        let live_rows = live.take_outputs(1);
        let live_digest = output_digest(&live_rows);

        let mut replayed = ReferenceEngine::new(cfg("h1"));
        replayed.restore(None).unwrap();
        for (i, input) in inputs.iter().enumerate() {
            let ctx = StepContext { tid: 1, step: i as u64 + 1, replay: true };
            assert_eq!(replayed.step(&ctx, input).unwrap(), input.checksums());
        }
        let rows = replayed.take_outputs(1);
        assert_eq!(rows, live_rows);
        assert_eq!(output_digest(&rows), live_digest, "output digest is stable");
        assert_eq!(replayed.state, live.state);
    }

    #[test]
    fn checkpoint_restore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ReferenceEngine::new(cfg("h1"));
        a.restore(None).unwrap();
        run_live(&mut a, 1, 10, 1);
        a.take_outputs(1);
        let path = a.checkpoint(dir.path(), 1).unwrap();
        assert!(path.starts_with(dir.path()));
        assert!(!dir.path().join(format!("{}.tmp", path.file_name().unwrap().to_string_lossy())).exists());

        let mut b = ReferenceEngine::new(cfg("h1"));
        b.restore(Some(&path)).unwrap();
        assert_eq!(b.state, a.state);
        // Both continue identically.
        run_live(&mut a, 11, 5, 2);
        run_live(&mut b, 11, 5, 2);
        assert_eq!(a.take_outputs(2), b.take_outputs(2));
        assert_eq!(a.state, b.state);

        let mut other = ReferenceEngine::new(cfg("h2"));
        let err = other.restore(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("h1") && err.contains("h2"), "{err}");
        std::fs::write(&path, b"{").unwrap();
        assert!(b.restore(Some(&path)).is_err());
    }

    #[test]
    fn outputs_are_the_keys_updated_in_the_tid_with_running_totals() {
        let mut e = ReferenceEngine::new(cfg("h1"));
        e.restore(None).unwrap();
        let push = |key: &str, value| {
            let records = vec![v1::Record { key: key.into(), value }];
            StepInput {
                endpoints: vec![EndpointInput {
                    endpoint: PUSH_ENDPOINT.into(),
                    checksum: checksum_of([(key, value)]),
                    payload: Payload::Value(v1::PushRequest { records }.encode_to_vec()),
                }],
            }
        };
        let ctx = |tid, step| StepContext { tid, step, replay: false };
        e.step(&ctx(1, 1), &push("a", 5)).unwrap();
        e.step(&ctx(1, 2), &push("a", 7)).unwrap();
        e.step(&ctx(1, 3), &push("b", 1)).unwrap();
        let rows = e.take_outputs(1);
        assert_eq!(rows, vec![
            OutputRow(serde_json::json!({"key": "a", "count": 2, "sum": 12})),
            OutputRow(serde_json::json!({"key": "b", "count": 1, "sum": 1})),
        ]);
        e.step(&ctx(2, 4), &push("a", 1)).unwrap();
        assert_eq!(e.take_outputs(2), vec![OutputRow(serde_json::json!({"key": "a", "count": 3, "sum": 13}))]);
        assert!(e.take_outputs(3).is_empty());
    }

    #[test]
    fn fault_flag_makes_the_first_replayed_step_diverge() {
        let mut live = ReferenceEngine::new(cfg("h1"));
        live.restore(None).unwrap();
        let inputs = run_live(&mut live, 1, 6, 1);
        let mut faulty = ReferenceEngine::new(ReferenceConfig { fault_nondeterministic_replay: true, ..cfg("h1") });
        faulty.restore(None).unwrap();
        let mut diverged = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let ctx = StepContext { tid: 1, step: i as u64 + 1, replay: true };
            let got = faulty.step(&ctx, input).unwrap();
            if got != input.checksums() {
                diverged.push((ctx.step, input.checksums().diff(&got)));
            }
        }
        assert_eq!(diverged.len(), 1, "exactly one step diverges: {diverged:?}");
        let first_with_records = inputs.iter().position(|i| i.record_count() > 0).unwrap() as u64 + 1;
        assert_eq!(diverged[0].0, first_with_records);
        assert_eq!(diverged[0].1.len(), 1);
        assert_eq!(diverged[0].1[0].endpoint(), GENERATOR_ENDPOINT);
    }

    #[test]
    fn bad_journaled_input_is_an_error_not_a_panic() {
        let mut e = ReferenceEngine::new(cfg("h1"));
        e.restore(None).unwrap();
        let ctx = StepContext { tid: 1, step: 1, replay: true };
        let bad = |endpoint: &str, payload| StepInput {
            endpoints: vec![EndpointInput { endpoint: endpoint.into(), checksum: Checksum::EMPTY, payload }],
        };
        assert!(e.step(&ctx, &bad(PUSH_ENDPOINT, Payload::Value(vec![0xff, 0xff, 0xff]))).is_err());
        assert!(e.step(&ctx, &bad("nope", Payload::Value(vec![]))).is_err());
        let gap = Payload::Reference(GeneratorRef { seed: 42, offset: 5, count: 1 });
        assert!(e.step(&ctx, &bad(GENERATOR_ENDPOINT, gap)).unwrap_err().to_string().contains("offset"));
    }

    fn push_of(values: &[i64]) -> tonic::Request<v1::PushRequest> {
        tonic::Request::new(v1::PushRequest { records: values.iter().map(|v| v1::Record { key: "p".into(), value: *v }).collect() })
    }

    fn queued(e: &ReferenceEngine) -> (usize, usize) {
        let q = e.queue.lock().unwrap();
        (q.queue.len(), q.queued_records)
    }

    /// A push that no live step takes (the host is cut off from its
    /// pipeline) is answered within the bound: withdrawn, not ingested, and
    /// the client told why. The next step takes nothing.
    #[tokio::test(start_paused = true)]
    async fn a_push_no_step_takes_is_withdrawn_and_refused_after_the_wait() {
        use v1::ingest_server::Ingest;
        let mut e = ReferenceEngine::new(ReferenceConfig { push_wait: Duration::from_millis(20), ..cfg("h1") });
        let err = e.ingest_handle().push(push_of(&[1, 2, 3])).await.expect_err("no step took it");
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("host h1") && err.message().contains("withdrawn, not ingested"), "{}", err.message());
        assert_eq!(queued(&e), (0, 0), "the records left the queue");
        let input = e.next_input(&StepContext { tid: 1, step: 1, replay: false }).unwrap();
        assert!(input.endpoints.iter().all(|i| i.endpoint != PUSH_ENDPOINT || i.checksum.count == 0), "{input:?}");
    }

    /// A push taken by a step before its wait ends is acknowledged by that
    /// step's journaling, however long that takes: taken records are never
    /// withdrawn.
    #[tokio::test(start_paused = true)]
    async fn a_push_taken_before_the_wait_ends_is_acknowledged_by_its_step() {
        use v1::ingest_server::Ingest;
        let mut e = ReferenceEngine::new(ReferenceConfig { push_wait: Duration::from_millis(20), ..cfg("h1") });
        let ingest = e.ingest_handle();
        let push = tokio::spawn(async move { ingest.push(push_of(&[5, 6])).await });
        // Queued once the handler has run up to its wait.
        while queued(&e).0 == 0 {
            tokio::task::yield_now().await;
        }
        let ctx = StepContext { tid: 3, step: 9, replay: false };
        let input = e.next_input(&ctx).unwrap();
        // The wait passes (paused clock) while the step is being journaled.
        tokio::time::sleep(Duration::from_millis(40)).await;
        e.input_durable(3, 9);
        let ack = push.await.unwrap().expect("acknowledged").into_inner();
        assert_eq!((ack.tid, ack.step), (3, 9));
        assert_eq!(e.step(&ctx, &input).unwrap(), input.checksums());
        assert_eq!(e.get("p"), Some((2, 11)));
    }

    /// A client that gives up (cancels, or its own deadline passes) takes
    /// its records out of the queue with it: they hold no room and are
    /// never ingested unacknowledged.
    #[tokio::test]
    async fn a_cancelled_push_leaves_the_queue() {
        use v1::ingest_server::Ingest;
        let e = ReferenceEngine::new(cfg("h1"));
        let ingest = e.ingest_handle();
        let push = tokio::spawn(async move { ingest.push(push_of(&[7])).await });
        while queued(&e).0 == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(queued(&e), (1, 1), "queued, waiting for a step");
        push.abort();
        assert!(push.await.unwrap_err().is_cancelled());
        assert_eq!(queued(&e), (0, 0));
    }
}
