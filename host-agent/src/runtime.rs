//! The host agent's async shell: owns the journal, the engine, the sink, the
//! persisted epoch and the coordinator session, feeds events to the sans-IO
//! `HostCore` and executes its actions, all in `Agent::execute` (one `match`).
//!
//! Session: connect to one of the coordinator addresses (in turn, with
//! exponential backoff capped at `reconnect_backoff_max`), open
//! `lockstep.v1.HostSession/Session`, send `Hello` as report 1, then loop over
//! (biased, in this order) shutdown, the next command, the heartbeat timer
//! and the next engine step the core asks for. A step runs to completion
//! before the next command is looked at, so the core sees steps as atomic.
//! When the stream ends for any reason the core hears `StreamClosed` and the
//! agent reconnects.
//!
//! Live step: input from the engine → step record appended to the journal
//! (durable) → engine told the input is durable → engine step → `StepDone`.
//! Replay step: the next step record of the tid from the journal (read ahead
//! across a run of committed tids by one blocking reader thread, bounded in
//! bytes so memory does not grow with the journal: `replay_reader`) → engine
//! step → the step, with both checksums, in its tid's entry of a
//! `ReplayedTids` report (see `Reporter`).

use crate::convert;
use crate::core::{Action, ErrorKind, Event, HostCore, Mode, Report};
use crate::engine::{output_digest, Engine, OutputRow, StepContext};
use crate::fsutil::{fsync_dir, DurableU64, DurableU64Error};
use crate::replay_reader::ReplayReader;
use crate::sink::{EmitOutcome, FileSink, SinkBatch, SinkError};
use crate::sink_writer::{SinkWriter, SinkWriterError};
use lockstep_journal::{pb, EndpointChecksums, Journal, JournalError, JournalIdent, JournalOptions};
use lockstep_proto::v1;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument, Span};

/// Interval between heartbeats on the coordinator stream.
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 500;
/// First reconnect delay; doubles per failed attempt.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 50;
/// Cap of the reconnect delay.
pub const RECONNECT_BACKOFF_MS_MAX_DEFAULT: u64 = 2_000;
/// Time allowed to establish a connection and get the stream's headers.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// HTTP/2 ping interval on the coordinator stream, and how long a ping may
/// go unanswered before the stream is declared dead and the host reconnects.
const KEEPALIVE_INTERVAL_MS: u64 = 1000;
const KEEPALIVE_TIMEOUT_MS: u64 = 2000;
/// Report batches queued towards the coordinator before the agent waits.
pub const REPORTS_QUEUED_MAX: usize = 1_024;
/// Replayed steps' reports sent together at most (see `Reporter`).
pub const REPORT_BATCH_MAX: usize = 512;
/// Prepared replayed tids sent together at most (see `Reporter`).
pub const REPORT_BATCH_TIDS_MAX: usize = 32;
/// Resolves once a queued commit marker is durable (`Journal::append_deferred`).
type MarkerDurable = Pin<Box<dyn Future<Output = Result<lockstep_journal::Position, JournalError>> + Send + Sync>>;

/// Commit markers queued without a step to carry them before the host
/// makes them durable on their own (see `Agent::commit`).
const MARKERS_QUEUED_MAX: usize = 64;
/// Replayed steps run back to back before the drive loop looks at the
/// stream, the heartbeat and shutdown again (see `Agent::drive`).
const REPLAY_BURST_STEPS: u32 = 32;
/// How long a stream we drop for a protocol violation stays open so the
/// coordinator can read our error report.
pub const DROP_GRACE_MS: u64 = 200;
/// Pause between live steps by default.
pub const STEP_INTERVAL_MS_DEFAULT: u64 = 10;

/// Everything the runtime needs to know; see `HostConfig::new` for defaults.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Stable host id (e.g. a StatefulSet ordinal); written into the journal.
    pub host_id: String,
    /// Cluster the journal belongs to; a journal of another cluster is refused.
    pub cluster_id: String,
    /// Coordinator URLs (`http://host:port`), tried in turn.
    pub coordinators: Vec<String>,
    /// Holds `journal/`, `checkpoints/`, `sink/`, `epoch`, `checkpoint-complete`,
    /// `data-id`.
    pub data_dir: PathBuf,
    /// Where the ingest/health/reflection gRPC server listens (port 0 = any).
    pub ingest_listen: SocketAddr,
    /// Pause between live steps.
    pub step_interval: Duration,
    pub heartbeat_interval: Duration,
    pub reconnect_backoff_max: Duration,
    pub journal_options: JournalOptions,
    /// Test only: the journal write of this live step fails as on a full
    /// disk (`--fault-fail-journal-write-at-step`).
    pub fault_fail_journal_write_at_step: Option<u64>,
    /// Test only: the sink write of this tid fails as on a full disk
    /// (`--fault-fail-sink-write-at-tid`).
    pub fault_fail_sink_write_at_tid: Option<u64>,
    /// Test only: every replayed step waits this long first, so that a
    /// test can watch a replay in progress (`--fault-replay-step-delay-ms`).
    pub fault_replay_step_delay: Option<Duration>,
    /// Mutual TLS for the coordinator session and the ingest listener
    /// (`--tls-cert`, `--tls-key`, `--tls-ca`); `None` is plaintext.
    pub tls: Option<crate::tls::Tls>,
    /// A plaintext listener with `grpc.health.v1` alone (`--health-listen`),
    /// for probes that speak no TLS.
    pub health_listen: Option<SocketAddr>,
}

impl HostConfig {
    /// A config with the daemon's defaults: cluster `lockstep-dev`, ingest on
    /// `127.0.0.1:0`, 10 ms between live steps, heartbeat every 500 ms,
    /// reconnect backoff capped at 2 s.
    pub fn new(host_id: impl Into<String>, coordinators: Vec<String>, data_dir: impl Into<PathBuf>) -> Self {
        HostConfig {
            host_id: host_id.into(),
            cluster_id: "lockstep-dev".into(),
            coordinators,
            data_dir: data_dir.into(),
            ingest_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            step_interval: Duration::from_millis(STEP_INTERVAL_MS_DEFAULT),
            heartbeat_interval: Duration::from_millis(HEARTBEAT_INTERVAL_MS_DEFAULT),
            reconnect_backoff_max: Duration::from_millis(RECONNECT_BACKOFF_MS_MAX_DEFAULT),
            journal_options: JournalOptions::default(),
            fault_fail_journal_write_at_step: None,
            fault_fail_sink_write_at_tid: None,
            fault_replay_step_delay: None,
            tls: None,
            health_listen: None,
        }
    }
}

/// Why the agent could not start or had to stop. Each message is complete
/// on its own line (the cause is part of it, not a separate source).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid host agent configuration: {0}")]
    Config(String),
    #[error("host {host}: cannot open the journal in {dir}: {cause}; the host cannot run without its journal")]
    Journal { host: String, dir: PathBuf, cause: Box<JournalError> },
    /// A journal or sink write failed. What the journal acknowledged may
    /// not be what the disk holds, so it refuses appends, and only a new
    /// process reads the truth back (`Journal::poisoned`); the sink is
    /// reopened the same way.
    #[error(
        "host {host}: {reason}; the agent exits so that a restart reopens its files from what is on disk. Free space or \
         fix the disk under {dir} and restart the agent: the coordinator recovers the pipeline once it is back, and \
         nothing journaled is lost"
    )]
    DiskWrite { host: String, dir: PathBuf, reason: String },
    /// One of the small durable files of the data directory (`epoch`,
    /// `checkpoint-complete`, `data-id`) could not be read or written; the
    /// cause names the file.
    #[error("host {host}: {cause}")]
    StateFile { host: String, cause: DurableU64Error },
    #[error("host {host}: {cause}")]
    Sink { host: String, cause: SinkError },
    #[error("host {host}: {cause}")]
    SinkWriter { host: String, cause: SinkWriterError },
    #[error("host {host}: I/O error on {path}: {cause}")]
    Io { host: String, path: PathBuf, cause: std::io::Error },
    #[error("host {host}: cannot serve the ingest API on {addr}: {reason}")]
    Serve { host: String, addr: String, reason: String },
    #[error("host {host}: internal error: {message}")]
    Internal { host: String, message: String },
}

/// `e` and its sources, joined: tonic's transport errors say little on top.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

/// Runs a host agent around `engine` until `shutdown` resolves.
///
/// Serves `services` (e.g. the reference engine's Ingest service) together
/// with `grpc.health.v1.Health` and server reflection (v1 and v1alpha) on
/// `config.ingest_listen`, and keeps a session with the coordinator.
pub async fn run<E: Engine>(
    mut config: HostConfig,
    engine: E,
    services: tonic::service::Routes,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    if config.coordinators.is_empty() {
        return Err(AgentError::Config("no coordinator address; pass --coordinator http://HOST:PORT[,...]".into()));
    }
    // A typo here would otherwise only show as a connect error retried
    // forever.
    let tls = config.tls.is_some();
    config.coordinators =
        config.coordinators.iter().map(|a| coordinator_url(a, tls)).collect::<Result<_, _>>().map_err(AgentError::Config)?;
    let mut agent = Agent::open(config, engine).await?;
    let host = agent.config.host_id.clone();

    // Ingest / health / reflection server.
    let listen = agent.config.ingest_listen;
    let serve_err = |reason: String| AgentError::Serve { host: host.clone(), addr: listen.to_string(), reason };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| serve_err(e.to_string()))?;
    let ingest_addr = listener.local_addr().map_err(|e| serve_err(e.to_string()))?;
    let (server_stop, server_stopped) = oneshot::channel::<()>();
    let health_listener = match agent.config.health_listen {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| AgentError::Serve {
            host: host.clone(),
            addr: a.to_string(),
            reason: format!("binding --health-listen: {e}"),
        })?),
        None => None,
    };
    let server = spawn_server(&host, listener, services, agent.config.tls.as_ref(), health_listener, server_stopped)?;
    match &agent.config.tls {
        Some(tls) => info!(host = %host, addr = %ingest_addr, "ingest, health and reflection API listening (mutual TLS: {})", tls.describe()),
        None => info!(host = %host, addr = %ingest_addr, "ingest, health and reflection API listening"),
    }
    agent.ingest_addr = ingest_addr.to_string();

    let mut shutdown = std::pin::pin!(shutdown);
    let mut result = agent.connect_loop(&mut shutdown).await;
    // A clean stop leaves every tid this host reported committed in the
    // sink (a crash instead leaves the unwritten tail to the replay).
    match agent.sink.sync().await {
        Ok(last) => info!(host = %host, last_tid = last, "sink drained"),
        Err(cause) => {
            error!(host = %host, "{cause}");
            result = result.and(Err(AgentError::SinkWriter { host: host.clone(), cause }));
        }
    }
    let _ = server_stop.send(());
    let _ = server.await;
    info!(host = %host, "host agent stopped");
    result
}

/// Resolves at `at`; at once if `at` has passed. (`sleep_until` rounds its
/// deadline up to the timer's next millisecond tick even when it has passed,
/// which cost every replayed step up to 1 ms.)
async fn step_due(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at).await;
    }
}

/// What [`replay_alone`] did: tids, steps and records replayed after
/// restoring `checkpoint`, and the time from the restored engine to the last
/// commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayAloneReport {
    pub checkpoint: u64,
    pub tids: u64,
    pub steps: u64,
    pub records: u64,
    pub micros: u64,
    /// CPU time of the whole process (every thread) over the same span,
    /// for comparing with a coordinated replay's (the benchmark).
    pub cpu_micros: u64,
}

/// CPU time used so far by this process, all threads; 0 if unavailable.
fn process_cpu_micros() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Benchmark baseline for coordinated replay: replays this host's journal
/// with no coordinator. Restores the newest checkpoint this host knows to be
/// complete, then, for every journaled tid after it (all tids up to
/// `through_tid`, or without it every tid holding a commit marker), runs the
/// same code as a coordinator-driven replay: the journal reader, the engine
/// over each step, the output digest, the commit (marker if missing, sink).
/// No session, no reports, no verification against a ledger.
///
/// `start` is awaited after the restore, just before the clock starts: a
/// benchmark running several hosts' replays at once passes a gate that
/// opens when every host is ready, so that no host's replay overlaps
/// another's start-up (opening and summarising its journal), which a
/// coordinated replay's clock does not include either.
pub async fn replay_alone<E: Engine>(
    config: HostConfig,
    engine: E,
    through_tid: Option<u64>,
    start: impl Future<Output = ()>,
) -> Result<ReplayAloneReport, AgentError> {
    let mut agent = Agent::open(config, engine).await?;
    agent.replay_alone(through_tid, start).await
}

fn spawn_server(
    host: &str,
    listener: tokio::net::TcpListener,
    services: tonic::service::Routes,
    tls: Option<&crate::tls::Tls>,
    health_listener: Option<tokio::net::TcpListener>,
    stop: oneshot::Receiver<()>,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let serve_err = |e: tonic_reflection::server::Error| AgentError::Serve {
        host: host.to_string(),
        addr: "ingest".into(),
        reason: format!("reflection: {e}"),
    };
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lockstep_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let routes = services
        .add_service(health)
        .add_service(reflection().build_v1().map_err(serve_err)?)
        .add_service(reflection().build_v1alpha().map_err(serve_err)?);
    // The plaintext health-only listener stops with this server.
    let (health_stop, health_stopped) = oneshot::channel::<()>();
    let health_server = match health_listener {
        Some(l) => Some(crate::health::spawn(format!("host {host}"), l, health_reporter.clone(), health_stopped).map_err(|reason| {
            AgentError::Serve { host: host.to_string(), addr: "health".into(), reason }
        })?),
        None => None,
    };
    let host = host.to_string();
    let tls = tls.cloned();
    Ok(tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.await;
            // Probes (Kubernetes asks for "") and watchers see the stop first.
            health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        };
        let served = crate::drain::serve_with_bounded_drain("the ingest API server", stopped, crate::drain::DRAIN_GRACE, |signal| {
            crate::tls::serve(crate::drain::server().add_routes(routes), listener, tls, "ingest", signal)
        })
        .await;
        if let Some(Err(e)) = served {
            error!(host = %host, error = %e, "ingest API server failed; pushes are no longer accepted");
        }
        let _ = health_stop.send(());
        if let Some(h) = health_server {
            let _ = h.await;
        }
    }))
}

/// A prepared tid's outputs, held until its commit.
struct Held {
    tid: u64,
    /// `None`: dropped at prepare, because the sink already held the tid
    /// (a replayed tid), so its commit skips it (see `Agent::hold`).
    rows: Option<Vec<OutputRow>>,
    /// The engine's output metadata when the outputs were taken.
    meta: serde_json::Map<String, serde_json::Value>,
    /// The `Prepared` report sent for it (none in `--replay-alone`), offered
    /// again in the next Hello while it awaits its commit.
    report: Option<v1::Prepared>,
}

/// The open transaction's accounting.
struct OpenTxn {
    tid: u64,
    mode: Mode,
    steps: u64,
    records: u64,
    aggregate: EndpointChecksums,
    span: Span,
}

/// An action that could not be carried out: becomes `Event::ActionFailed`.
struct Failure {
    kind: ErrorKind,
    tid: u64,
    message: String,
}

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    /// Could not connect or open the stream; try the next address.
    ConnectFailed(String),
    /// The stream was up and is gone.
    Lost(String),
    /// We end the stream: the coordinator broke the protocol.
    Dropped(String),
    /// The coordinator is not the leader and named the one that is
    /// (UNAVAILABLE with `lockstep-leader` metadata): `leader` is its URL.
    Redirect { leader: String, why: String },
    /// A journal or sink write failed: the error report is sent, and the
    /// agent stops (`AgentError::DiskWrite`).
    DiskWrite(String),
}

/// What is wrong with `id` as a host id, if anything. A host id names the
/// host everywhere (logs, the ledger, the default data directory
/// `./lockstep-data/{host id}`, a Kubernetes pod), so it is what a pod name
/// may be: 1 to 253 letters, digits, `-`, `_` and `.`, starting with a
/// letter or digit (no path separators, no `..`, no spaces or commas).
pub fn host_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("the host id is empty".into());
    }
    if id.len() > 253 {
        return Some(format!("the host id is {} bytes long; at most 253", id.len()));
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some(format!("host id {id:?} must start with a letter or digit"));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Some(format!("host id {id:?} contains {c:?}; use letters, digits, '-', '_' and '.'"));
    }
    None
}

/// A coordinator address as the URL to connect to: `http://` (`https://`
/// with `tls`) is added when it has no scheme (`host:port`, as the
/// coordinators name each other), and a URL tonic cannot connect to, or
/// whose scheme contradicts `tls`, is refused, naming it.
pub fn coordinator_url(addr: &str, tls: bool) -> Result<String, String> {
    let addr = addr.trim();
    let scheme = crate::tls::scheme(tls);
    let url = if addr.contains("://") { addr.to_string() } else { format!("{scheme}://{addr}") };
    let given = url.split_once("://").map_or("", |(s, _)| s);
    match given {
        "http" if tls => {
            return Err(format!(
                "coordinator address {addr:?} is plaintext (http://), but this host agent has mutual TLS on (--tls-cert); \
                 give https://host:port or host:port"
            ))
        }
        "https" if !tls => {
            return Err(format!(
                "coordinator address {addr:?} asks for TLS (https://), but this host agent has no TLS files; pass \
                 --tls-cert, --tls-key and --tls-ca, or give http://host:port"
            ))
        }
        "http" | "https" => {}
        other => return Err(format!("coordinator address {addr:?} has scheme {other:?}; give host:port or {scheme}://host:port")),
    }
    match tonic::transport::Endpoint::from_shared(url.clone()) {
        Ok(e) if e.uri().host().is_some_and(|h| !h.is_empty()) && e.uri().port().is_some() => Ok(url),
        Ok(_) => Err(format!("coordinator address {addr:?} names no host and port; give host:port or {scheme}://host:port")),
        Err(e) => Err(format!("coordinator address {addr:?} is not a URL ({e}); give host:port or {scheme}://host:port")),
    }
}

/// The leader a non-leader coordinator names in its UNAVAILABLE answer, as
/// a URL (`coordinator_url`; `https://` with `tls`).
fn leader_redirect(status: &tonic::Status, tls: bool) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let addr = status.metadata().get(lockstep_proto::LEADER_METADATA_KEY)?.to_str().ok()?.trim();
    if addr.is_empty() {
        return None;
    }
    coordinator_url(addr, tls).ok()
}

/// One coordinator address of a reconnect round that could not be reached.
struct RoundFailure {
    addr: String,
    /// The coordinator whose redirect named `addr` as the leader, if it
    /// was tried for that reason.
    named_by: Option<String>,
    why: String,
}

/// The round's failures as the warning says them: each address once, in
/// the order first tried, with every coordinator that named it the leader
/// and each distinct reason. A host cut off from the leader alone is sent
/// there by every follower; the warning said "2 of 3 failed" and listed the
/// leader twice, and nothing said the followers had answered.
fn round_summary(failed: &[RoundFailure]) -> (Vec<String>, String) {
    // Per address, in the order first tried: who named it, and why it failed.
    let mut seen: Vec<(&str, Vec<&str>, Vec<&str>)> = Vec::new();
    for f in failed {
        let i = match seen.iter().position(|(addr, ..)| *addr == f.addr) {
            Some(i) => i,
            None => {
                seen.push((&f.addr, Vec::new(), Vec::new()));
                seen.len() - 1
            }
        };
        let (_, named, whys) = &mut seen[i];
        if let Some(n) = f.named_by.as_deref().filter(|n| !named.contains(n)) {
            named.push(n);
        }
        if !whys.contains(&f.why.as_str()) {
            whys.push(&f.why);
        }
    }
    let parts: Vec<String> = seen
        .iter()
        .map(|(addr, named, whys)| {
            let by = if named.is_empty() { String::new() } else { format!(" (the leader, as {} answered)", named.join(" and ")) };
            format!("{addr}{by}: {}", whys.join("; then "))
        })
        .collect();
    (seen.iter().map(|(addr, ..)| addr.to_string()).collect(), parts.join("; "))
}

/// How a failed Session call or a stream error ends the session.
fn status_end(status: &tonic::Status, what: &str, lost: bool, tls: bool) -> SessionEnd {
    let mut why = format!("{what}: {} ({:?}){}", status.message(), status.code(), crate::tls::transport_detail(status));
    // A plaintext HTTP/2 preface sent to a TLS listener dies in the
    // transport with nothing that says TLS. Only a session that never got
    // going can be that: a stream that broke after it was up (a partition,
    // a coordinator gone) says the same words and has nothing to do with TLS.
    let garbled = matches!(status.code(), tonic::Code::Unknown | tonic::Code::Internal)
        && (status.message().contains("transport error") || status.message().contains("h2 protocol error"));
    if garbled && !tls && !lost {
        why.push_str(
            "; if the coordinator serves mutual TLS, give this host agent --tls-cert, --tls-key and --tls-ca (it speaks \
             plaintext now)",
        );
    }
    match leader_redirect(status, tls) {
        Some(leader) => SessionEnd::Redirect { leader, why },
        None if lost => SessionEnd::Lost(why),
        None => SessionEnd::ConnectFailed(why),
    }
}

/// The stream towards the coordinator, numbering reports 1, 2, 3, ...
///
/// Reports travel in batches (one channel message, so one wake-up of the
/// stream's encoder, which writes them in one HTTP/2 DATA frame sequence
/// and one flush). `send` queues and flushes at once; `queue` only numbers
/// and queues, `queue_replayed_step` adds a replayed step to the
/// `ReplayedTids` report at the end of the queue (or starts one),
/// `queue_prepared` puts a tid's `Prepared` next to its own steps there
/// when they are still queued, and `set_aside_committed` keeps a replayed
/// tid's `Committed` out of the queue for a while (below).
///
/// The drive loop flushes (`flush_unless_replaying`) whenever the host has
/// no replayed step to run next (live, idle, or waiting for the
/// coordinator's next command) and, while it goes on replaying, once
/// `REPORT_BATCH_TIDS_MAX` prepared tids or `REPORT_BATCH_MAX` steps are
/// queued. Inside a replay window a report therefore carries several tids:
/// per message cost (an HTTP/2 frame, a write, a wake-up on each side) is
/// paid once per batch instead of once per tid, which is what the
/// coordinated replay's overhead was made of. The window
/// (`--replay-window`, 128) is wider than a batch, so a host keeps replaying
/// while the coordinator verifies the batch it sent.
///
/// Every step is still reported explicitly with its number and checksums,
/// every report is numbered, and the order is the order the host decided
/// them; a batch only delays a replayed step's report until its tid has
/// run (invariant 8, ARCHITECTURE "Replay timing"). The one exception is
/// a `Committed` while the host goes on replaying: it waits aside, and
/// those set aside are queued as one `CommittedTids` report listing each
/// tid in commit order, at the next flush (after the batch) or before the
/// next other report `queue` takes (so that a live `Committed` never
/// precedes it). Queued at once, it closed the running `ReplayedTids`,
/// whose later steps then went in a second report; one
/// `Committed` report per tid cost the coordinator ~17% of its CPU in
/// a replay. None is merged into a latest value (invariant 8): every tid
/// is listed, and the coordinator checks each as a single `Committed`
/// (increasing, and sent `Commit`).
struct Reporter {
    tx: mpsc::Sender<Vec<v1::HostReport>>,
    next_seq: u64,
    pending: Vec<v1::HostReport>,
    /// Replayed steps in `pending`, across its batches.
    pending_steps: usize,
    /// Prepared reports in `pending`.
    pending_tids: usize,
    /// Replayed tids committed since the last flush, oldest first, not
    /// queued yet (`set_aside_committed`).
    committed_aside: Vec<u64>,
}

impl Reporter {
    fn new(tx: mpsc::Sender<Vec<v1::HostReport>>) -> Self {
        Reporter { tx, next_seq: 1, pending: Vec::new(), pending_steps: 0, pending_tids: 0, committed_aside: Vec::new() }
    }

    /// Numbers `report` and queues it for the next flush, behind the
    /// `Committed` reports set aside.
    fn queue(&mut self, report: v1::host_report::Report) {
        self.queue_committed_aside();
        self.queue_raw(report);
    }

    /// Keeps the `Committed` of a replayed `tid` out of the queue until the
    /// next flush or the next report `queue` takes.
    fn set_aside_committed(&mut self, tid: u64) {
        self.committed_aside.push(tid);
    }

    /// Queues the `Committed` reports set aside, as one `CommittedTids`
    /// (each tid listed, in commit order, under one seq).
    fn queue_committed_aside(&mut self) {
        if !self.committed_aside.is_empty() {
            let tids = std::mem::take(&mut self.committed_aside);
            self.queue_raw(v1::host_report::Report::CommittedTids(v1::CommittedTids { tids }));
        }
    }

    /// Numbers `report` and queues it, leaving the `Committed` reports set
    /// aside where they are.
    fn queue_raw(&mut self, report: v1::host_report::Report) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push(v1::HostReport { seq, report: Some(report) });
    }

    /// The `ReplayedTids` at the end of the queue, if nothing was queued
    /// behind it: it can take more.
    fn open_run(&mut self) -> Option<&mut v1::ReplayedTids> {
        match self.pending.last_mut().and_then(|r| r.report.as_mut()) {
            Some(v1::host_report::Report::ReplayedTids(run)) => Some(run),
            _ => None,
        }
    }

    /// Queues the report of a replayed step of `tid`: appended to the entry
    /// of `tid` at the end of the queued `ReplayedTids` (or a new entry
    /// there), or the first of a new report when there is none or its
    /// endpoint table lacks an endpoint the step names.
    fn queue_replayed_step(&mut self, tid: u64, step: u64, checksums: &EndpointChecksums, journaled: &EndpointChecksums) {
        self.pending_steps += 1;
        if let Some(run) = self.open_run() {
            match run.tids.last_mut() {
                Some(t) if t.tid == tid && t.prepared.is_none() => {
                    if convert::push_replayed_step(&run.endpoints, t, step, checksums, journaled) {
                        return;
                    }
                }
                _ => {
                    let mut t = convert::replayed_tid(tid);
                    if convert::push_replayed_step(&run.endpoints, &mut t, step, checksums, journaled) {
                        run.tids.push(t);
                        return;
                    }
                }
            }
        }
        let endpoints = convert::step_table(checksums, journaled);
        let mut t = convert::replayed_tid(tid);
        convert::push_replayed_step(&endpoints, &mut t, step, checksums, journaled);
        self.queue_raw(v1::host_report::Report::ReplayedTids(v1::ReplayedTids { endpoints, tids: vec![t] }));
    }

    /// Queues `tid`'s Prepared: into the queued entry of its steps, if that
    /// is still open and its table names the aggregate's endpoints, else as
    /// a report of its own; the drive loop flushes it.
    fn queue_prepared(&mut self, report: v1::Prepared) {
        self.pending_tids += 1;
        if let Some(run) = self.open_run() {
            if let Some(t) = run.tids.last_mut().filter(|t| t.tid == report.tid && t.prepared.is_none()) {
                if let Some(cells) = convert::prepared_cells(&run.endpoints, &report) {
                    t.prepared = Some(cells);
                    return;
                }
            }
        }
        self.queue_raw(v1::host_report::Report::Prepared(report));
    }

    /// The drive loop's flush: everything queued goes out, unless the
    /// host goes on replaying (`replaying`: its next step is a replayed
    /// one) and the batch is not full yet.
    async fn flush_unless_replaying(&mut self, replaying: bool) -> Result<(), SessionEnd> {
        if replaying && self.pending_steps < REPORT_BATCH_MAX && self.pending_tids < REPORT_BATCH_TIDS_MAX {
            return Ok(());
        }
        self.flush().await
    }

    /// Hands every queued report to the stream.
    async fn flush(&mut self) -> Result<(), SessionEnd> {
        self.queue_committed_aside();
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_steps = 0;
        self.pending_tids = 0;
        self.tx.send(batch).await.map_err(|_| SessionEnd::Lost("the report stream to the coordinator is closed".into()))
    }

    /// Queues `report` behind whatever is queued and flushes.
    async fn send(&mut self, report: v1::host_report::Report) -> Result<(), SessionEnd> {
        self.queue(report);
        self.flush().await
    }
}

struct Agent<E> {
    config: HostConfig,
    core: HostCore,
    /// `None` only while `checkpoint`/`restore` run on a blocking thread.
    engine: Option<E>,
    journal: Arc<Journal>,
    /// The sink, written in the background (`sink_writer.rs`).
    sink: SinkWriter,
    epoch_file: DurableU64,
    complete_file: DurableU64,
    /// Names this data directory to the coordinator (`Hello.data_id`).
    data_id: u64,
    /// The first `DiskWrite` error reported (any failed write to the data
    /// directory): the agent stops (`disk_failure`).
    disk_write_failed: Option<String>,
    /// Newest checkpoint the ledger declared complete, as far as we know.
    complete_tid: u64,
    /// Checkpoints held durably (journaled and present on disk), by tid.
    checkpoints: BTreeMap<u64, PathBuf>,
    /// Tids whose commit marker the journal holds (after `complete_tid`).
    journal_commits: BTreeSet<u64>,
    /// The newest commit marker queued and not yet known durable (see
    /// `commit`), and how many are queued with it: the journal commits in
    /// queue order and poisons itself on a failed sync, so the newest one
    /// durable means all of them are.
    marker: Option<MarkerDurable>,
    markers_queued: usize,
    /// Last step number journaled by this host (0 = none).
    last_step: u64,
    txn: Option<OpenTxn>,
    /// Outputs of each prepared tid, oldest first, each released at its
    /// own commit, with the engine's output metadata of that moment (by
    /// commit time later tids' steps may have run). More than one inside a
    /// replay window or a commit pipeline (the core's `awaiting` tids, then
    /// the current prepared one).
    /// Each keeps its `Prepared` report, so that a coordinator on a later
    /// stream gets the same report again (`RepeatPrepared`) and a Hello can
    /// offer it (`resumable`).
    held_outputs: VecDeque<Held>,
    /// The journal reader of the tids being replayed (`replay_reader`):
    /// kept from one replayed tid to the next while it reads ahead.
    reader: Option<ReplayReader>,
    /// Last step re-run since the last restore: the next replayed record
    /// must name it as its previous step (DESIGN invariant 6).
    replay_prev_step: Option<u64>,
    ingest_addr: String,
    next_live_step_at: Instant,
    /// The last session got as far as `Welcome`.
    welcomed_in_session: bool,
    metrics: crate::metrics::AgentMetrics,
}

/// The data directory's id (`Hello.data_id`): read from `file`, or, the
/// first time, drawn at random (never 0, which means "not given") and
/// stored durably.
fn load_or_create_data_id(file: &DurableU64) -> Result<u64, DurableU64Error> {
    let stored = match file.load() {
        Ok(id) => id,
        // Nothing depends on the old value but the coordinator's check
        // for a second agent: a damaged file is simply replaced.
        Err(e @ DurableU64Error::Parse { .. }) => {
            warn!("{e}; drawing a new data directory id");
            0
        }
        Err(e) => return Err(e),
    };
    match stored {
        0 => {
            let id = rand::random::<u64>().max(1);
            file.store(id)?;
            Ok(id)
        }
        id => Ok(id),
    }
}

impl<E: Engine> Agent<E> {
    /// Opens the host's data directory: epoch, journal (validated, torn tail
    /// cut), sink (torn line cut), checkpoints held. The core starts Stopped.
    async fn open(config: HostConfig, engine: E) -> Result<Agent<E>, AgentError> {
        let host = config.host_id.clone();
        if let Some(problem) = host_id_problem(&host) {
            return Err(AgentError::Config(format!("--host-id: {problem}")));
        }
        if config.cluster_id.trim().is_empty() {
            return Err(AgentError::Config("--cluster-id is empty; give the cluster's name, as the coordinators have it".into()));
        }
        let data_dir = config.data_dir.clone();
        if let Some(problem) = crate::fsutil::data_dir_problem(&data_dir, "the host's") {
            return Err(AgentError::Config(problem));
        }
        for dir in [data_dir.clone(), data_dir.join("checkpoints")] {
            std::fs::create_dir_all(&dir).map_err(|cause| AgentError::Io { host: host.clone(), path: dir.clone(), cause })?;
        }
        // Before any state is read: what a killed predecessor wrote but
        // never synced must not count until it is on the disk. On its own
        // thread: on a busy disk it can take seconds.
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || lockstep_journal::pagecache::sync_filesystem(&dir))
            .await
            .map_err(|e| AgentError::Internal { host: host.clone(), message: format!("syncfs task failed: {e}") })?
            .map_err(|cause| AgentError::Io { host: host.clone(), path: data_dir.clone(), cause })?;

        let epoch_file = DurableU64::new(data_dir.join("epoch"));
        let complete_file = DurableU64::new(data_dir.join("checkpoint-complete"));
        let highest_epoch = epoch_file.load().map_err(|cause| AgentError::StateFile { host: host.clone(), cause })?;
        let complete_tid = complete_file.load().map_err(|cause| AgentError::StateFile { host: host.clone(), cause })?;

        let journal_dir = data_dir.join("journal");
        let ident = JournalIdent { cluster_id: config.cluster_id.clone(), host_id: host.clone() };
        let (journal, report) = {
            let (dir, opts) = (journal_dir.clone(), config.journal_options.clone());
            tokio::task::spawn_blocking(move || Journal::open(dir, ident, opts))
                .await
                .map_err(|e| AgentError::Internal { host: host.clone(), message: format!("journal open panicked: {e}") })?
                .map_err(|cause| AgentError::Journal { host: host.clone(), dir: journal_dir.clone(), cause: Box::new(cause) })?
        };
        if report.torn_tail_bytes > 0 {
            warn!(host = %host, dir = %journal_dir.display(), cut_bytes = report.torn_tail_bytes, "journal had a torn tail (crash mid-append); cut it off");
        }
        info!(host = %host, segments = report.segments, records = report.records, last_step = report.last_step, "journal open");
        // After the journal's lock: two agents cannot both create it.
        let data_id = load_or_create_data_id(&DurableU64::new(data_dir.join("data-id")))
            .map_err(|cause| AgentError::StateFile { host: host.clone(), cause })?;

        let mut sink = FileSink::open(&data_dir.join("sink")).map_err(|cause| AgentError::Sink { host: host.clone(), cause })?;
        if let Some(tid) = config.fault_fail_sink_write_at_tid {
            warn!(host = %host, tid, "fault injection: the sink write of tid {tid} fails as on a full disk");
            sink.fail_append_at = Some(tid);
        }
        info!(host = %host, file = %sink.path().display(), last_tid = sink.last_emitted(), "sink open");
        let sink = SinkWriter::start(sink).map_err(|cause| AgentError::SinkWriter { host: host.clone(), cause })?;

        let mut agent = Agent {
            core: HostCore::new(highest_epoch),
            engine: Some(engine),
            journal: Arc::new(journal),
            sink,
            epoch_file,
            complete_file,
            data_id,
            disk_write_failed: None,
            complete_tid,
            checkpoints: BTreeMap::new(),
            journal_commits: BTreeSet::new(),
            marker: None,
            markers_queued: 0,
            last_step: report.last_step,
            txn: None,
            held_outputs: VecDeque::new(),
            reader: None,
            replay_prev_step: None,
            ingest_addr: String::new(),
            next_live_step_at: Instant::now(),
            welcomed_in_session: false,
            metrics: crate::metrics::AgentMetrics::new(&config.host_id),
            config,
        };
        agent.metrics.epoch.set(agent.core.highest_epoch() as f64);
        agent.load_checkpoints().await?;
        Ok(agent)
    }

    fn host(&self) -> &str {
        &self.config.host_id
    }

    async fn blocking<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, String> {
        tokio::task::spawn_blocking(f).await.map_err(|e| format!("blocking task failed: {e}"))
    }

    /// Reads the journal's checkpoint records; keeps those whose file exists.
    async fn load_checkpoints(&mut self) -> Result<(), AgentError> {
        let journal = self.journal.clone();
        let checkpoints = self
            .blocking(move || journal.checkpoint_records())
            .await
            .map_err(|message| AgentError::Internal { host: self.host().into(), message })?
            .map_err(|cause| AgentError::Journal {
                host: self.host().into(),
                dir: self.config.data_dir.join("journal"),
                cause: Box::new(cause),
            })?;
        for (tid, location) in checkpoints {
            let path = self.config.data_dir.join(&location);
            if path.exists() {
                self.checkpoints.insert(tid, path);
            } else if tid < self.complete_tid {
                // Deleted on purpose once checkpoint `complete_tid` was
                // complete (`checkpoint_complete` stores that tid first);
                // the record stays until its journal segment is collected.
                debug!(host = %self.host(), tid, complete = self.complete_tid, "checkpoint {tid} was deleted after a newer one completed");
            } else {
                warn!(
                    host = %self.host(), tid, file = %path.display(), complete = self.complete_tid,
                    "journal names checkpoint {tid}, but its file is gone (it was never deleted on purpose: it is not older than the newest complete checkpoint); not offering it to the coordinator"
                );
            }
        }
        Ok(())
    }

    async fn replay_alone(&mut self, through_tid: Option<u64>, start: impl Future<Output = ()>) -> Result<ReplayAloneReport, AgentError> {
        let host = self.host().to_string();
        let internal = |message: String| AgentError::Internal { host: host.clone(), message };
        let journal = self.journal.clone();
        let checkpoint = self.complete_tid;
        // Only which tids to replay and which are committed outlive the
        // summary, which is dropped on the blocking thread.
        let (commits, tids) = self
            .blocking(move || {
                let summary = journal.summarize(checkpoint)?;
                let commits: BTreeSet<u64> = summary.tids.iter().filter(|t| t.committed).map(|t| t.tid).collect();
                let tids: Vec<u64> = summary
                    .tids
                    .iter()
                    .filter(|t| t.tid > checkpoint && through_tid.map_or(t.committed, |max| t.tid <= max))
                    .map(|t| t.tid)
                    .collect();
                Ok::<_, JournalError>((commits, tids))
            })
            .await
            .map_err(&internal)?
            .map_err(|e| internal(format!("summarizing the journal failed: {e}")))?;
        self.journal_commits = commits;
        self.restore(checkpoint).await.map_err(|f| internal(f.message))?;
        start.await;
        let started = std::time::Instant::now();
        let cpu_started = process_cpu_micros();
        let mut report = ReplayAloneReport { checkpoint, ..Default::default() };
        for tid in tids {
            self.open_txn(tid, Mode::Replay);
            loop {
                match self.replay_step(tid).await {
                    Event::StepFinished { .. } => {}
                    Event::ReplayExhausted { .. } => break,
                    Event::ActionFailed { message, .. } => return Err(internal(message)),
                    other => return Err(internal(format!("unexpected replay event {other:?}"))),
                }
            }
            let txn = self.txn.as_ref().ok_or_else(|| internal(format!("tid {tid} not open")))?;
            report.tids += 1;
            report.steps += txn.steps;
            report.records += txn.records;
            let engine = self.engine.as_mut().ok_or_else(|| internal("engine missing".into()))?;
            let rows = engine.take_outputs(tid);
            std::hint::black_box(output_digest(&rows));
            let meta = engine.output_metadata();
            self.hold(Held { tid, rows: Some(rows), meta, report: None });
            self.commit(tid).await.map_err(|f| internal(f.message))?;
        }
        // The baseline includes the sink's writes, as a coordinated replay's
        // time does.
        self.sink.sync().await.map_err(|cause| AgentError::SinkWriter { host: host.clone(), cause })?;
        report.micros = started.elapsed().as_micros() as u64;
        report.cpu_micros = process_cpu_micros().saturating_sub(cpu_started);
        Ok(report)
    }

    // ------------------------------------------------------------ sessions

    /// Connects to the coordinators in turn (exponential backoff between
    /// failed attempts) and follows a non-leader's redirect to the leader at
    /// once. Immediate redirects are bounded by the number of coordinators
    /// in a row: during an election two nodes may each name the other (or a
    /// stale leader), and the host then backs off instead of ping-ponging.
    async fn connect_loop(&mut self, shutdown: &mut Pin<&mut impl Future<Output = ()>>) -> Result<(), AgentError> {
        let min = Duration::from_millis(RECONNECT_BACKOFF_MS_MIN);
        let coordinators = self.config.coordinators.len();
        let mut backoff = min;
        let mut attempt = 0usize;
        let mut redirect: Option<String> = None;
        let mut redirects_in_a_row = 0usize;
        // Coordinators tried since the last backoff: a dead or refusing one
        // is skipped at once for the next in the list (after a leader dies
        // the others are where the pipeline continues); only when a whole
        // round failed does the host back off.
        let mut tried_in_round = 0usize;
        // Why each coordinator of this round could not be reached: logged
        // together once the whole round failed, so that the warning names
        // every address that is down or refusing, not only the last one.
        let mut failed_this_round: Vec<RoundFailure> = Vec::new();
        // The coordinator whose redirect named the address tried next.
        let mut redirected_by: Option<String> = None;
        loop {
            let (addr, named_by) = match redirect.take() {
                Some(leader) => (leader, redirected_by.take()),
                None => {
                    attempt += 1;
                    (self.config.coordinators[(attempt - 1) % coordinators].clone(), None)
                }
            };
            let end = self.session(&addr, shutdown).await;
            let welcomed_once = std::mem::take(&mut self.welcomed_in_session);
            match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::DiskWrite(reason) => {
                    return Err(AgentError::DiskWrite { host: self.host().into(), dir: self.config.data_dir.clone(), reason })
                }
                SessionEnd::Redirect { leader, why } => {
                    if welcomed_once {
                        backoff = min;
                    }
                    if redirects_in_a_row < coordinators && leader != addr {
                        redirects_in_a_row += 1;
                        info!(host = %self.host(), coordinator = %addr, leader = %leader, "coordinator is not the leader ({why}); connecting to the leader it names");
                        redirect = Some(leader);
                        redirected_by = Some(addr);
                        continue;
                    }
                    warn!(host = %self.host(), coordinator = %addr, leader = %leader, retry_in_ms = backoff.as_millis() as u64, "redirects between coordinators keep bouncing (election in progress?); backing off: {why}");
                }
                SessionEnd::ConnectFailed(why) => {
                    debug!(host = %self.host(), coordinator = %addr, "cannot reach coordinator: {why}");
                    failed_this_round.push(RoundFailure { addr: addr.clone(), named_by, why });
                }
                SessionEnd::Lost(why) | SessionEnd::Dropped(why) => {
                    warn!(host = %self.host(), coordinator = %addr, state = %self.core.state(), "coordinator stream ended: {why}; reconnecting");
                    // A coordinator that accepts the stream and then ends it
                    // without ever welcoming us (it refused our Hello) is
                    // retried with growing backoff, not in a tight loop.
                    if welcomed_once {
                        backoff = min;
                    }
                }
            }
            if welcomed_once {
                tried_in_round = 0;
                failed_this_round.clear();
            }
            tried_in_round += 1;
            if tried_in_round < coordinators {
                redirects_in_a_row = 0;
                continue;
            }
            tried_in_round = 0;
            if !failed_this_round.is_empty() {
                // The addresses also as a field of their own, for JSON log
                // consumers that filter on it (as on the stream warnings'
                // `coordinator`).
                let (addrs, why) = round_summary(&failed_this_round);
                warn!(
                    host = %self.host(),
                    coordinators = %addrs.join(","),
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot reach a coordinator ({} of {coordinators} failed this round): {why}",
                    addrs.len(),
                );
                failed_this_round.clear();
            }
            // A backoff ends a run of redirects.
            redirects_in_a_row = 0;
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.config.reconnect_backoff_max.max(min));
        }
    }

    async fn hello(&mut self) -> Result<v1::Hello, String> {
        // The summary reads what is durable; a committed tid's marker
        // must be in it.
        self.markers_durable().await?;
        let journal = self.journal.clone();
        let after = self.complete_tid;
        // A Hello lists every tid after the checkpoint: the summary is put
        // in its wire form (columns over one endpoint table) on the
        // blocking thread and dropped there, tid by tid as it is converted,
        // so only the compact wire form reaches this thread.
        let (commits, journal_endpoints, journal_tids) = self
            .blocking(move || {
                let summary = journal.summarize(after)?;
                let commits: BTreeSet<u64> = summary.tids.iter().filter(|t| t.committed).map(|t| t.tid).collect();
                let (endpoints, tids) = convert::journal_summary_to_proto(summary);
                Ok::<_, JournalError>((commits, endpoints, tids))
            })
            .await?
            .map_err(|e| format!("summarizing the journal for Hello failed: {e}"))?;
        self.journal_commits = commits;
        Ok(v1::Hello {
            protocol_version: lockstep_proto::PROTOCOL_VERSION,
            host_id: self.config.host_id.clone(),
            cluster_id: self.config.cluster_id.clone(),
            highest_epoch: self.core.highest_epoch(),
            checkpoints: self.checkpoints.keys().copied().collect(),
            journal: journal_tids,
            journal_endpoints,
            last_step: self.last_step,
            ingest_addr: self.ingest_addr.clone(),
            data_id: self.data_id,
            resumable: self.resumable(),
        })
    }

    /// `Hello.resumable`: the core's resume point plus this runtime's
    /// accounting of the kept transaction. A kept transaction without
    /// accounting (or a prepared one without its report) would be a bug;
    /// then nothing is offered and the coordinator replays, which is always
    /// safe.
    fn resumable(&self) -> Option<v1::Resumable> {
        let point = self.core.resumable()?;
        let Some((tid, prepared)) = point.open else {
            return Some(v1::Resumable {
                last_committed_tid: point.last_committed,
                state: v1::HostTxnState::Idle as i32,
                ..Default::default()
            });
        };
        let Some(txn) = self.txn.as_ref().filter(|t| t.tid == tid) else {
            warn!(host = %self.host(), tid, "kept transaction {tid} has no accounting; offering nothing to resume");
            return None;
        };
        let report = match (prepared, self.held_report(tid)) {
            (false, _) => None,
            (true, Some(p)) => Some(p.clone()),
            (true, None) => {
                warn!(host = %self.host(), tid, "prepared transaction {tid} has no kept report; offering nothing to resume");
                return None;
            }
        };
        // Commit pipeline: the reports of the tids awaiting their commit.
        let mut awaiting = Vec::with_capacity(point.awaiting.len());
        for t in &point.awaiting {
            match self.held_report(*t).cloned() {
                Some(r) => awaiting.push(r),
                None => {
                    warn!(host = %self.host(), tid = t, "tid {t} awaits its commit but its Prepared report is not kept; offering nothing to resume");
                    return None;
                }
            }
        }
        let state = if prepared { v1::HostTxnState::Prepared } else { v1::HostTxnState::OpenLive };
        Some(v1::Resumable {
            last_committed_tid: point.last_committed,
            state: state as i32,
            tid,
            steps: txn.steps,
            aggregate: convert::checksums_to_proto(&txn.aggregate),
            prepared: report,
            awaiting,
        })
    }

    async fn session(&mut self, addr: &str, shutdown: &mut Pin<&mut impl Future<Output = ()>>) -> SessionEnd {
        let hello = match self.hello().await {
            Ok(h) => h,
            // A journal that cannot be summarized is not a reason to spin:
            // the backoff applies and the error is logged each round. One
            // that refuses writes never recovers in this process.
            Err(e) => {
                // (Its commit markers failed to sync: nothing was reported.)
                return match self.journal_refuses() {
                    Some(reason) => SessionEnd::DiskWrite(reason),
                    None => SessionEnd::ConnectFailed(format!("host {}: {e}", self.host())),
                }
            }
        };
        let tls = self.config.tls.clone();
        let connect = async {
            let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
                .map_err(|e| SessionEnd::ConnectFailed(format!("bad coordinator address {addr:?}: {e}")))?
                .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                .tcp_nodelay(true)
                // The coordinator sends nothing while it waits on other
                // hosts; without pings a host cut off by a partition (or
                // whose coordinator vanished with its IP) would only notice
                // at TCP timeout, many minutes later.
                .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
                .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.client())
                    .map_err(|e| SessionEnd::ConnectFailed(format!("TLS towards {addr} ({}): {}", tls.describe(), error_chain(&e))))?;
            }
            let channel =
                endpoint.connect().await.map_err(|e| SessionEnd::ConnectFailed(format!("connect: {}", error_chain(&e))))?;
            let (tx, rx) = mpsc::channel::<Vec<v1::HostReport>>(REPORTS_QUEUED_MAX);
            let mut reporter = Reporter::new(tx);
            reporter
                .send(v1::host_report::Report::Hello(hello))
                .await
                .map_err(|_| SessionEnd::ConnectFailed("report channel closed".to_string()))?;
            let mut client = v1::host_session_client::HostSessionClient::new(channel);
            let response = client
                .session(futures::StreamExt::flat_map(tokio_stream::wrappers::ReceiverStream::new(rx), futures::stream::iter))
                .await
                .map_err(|s| status_end(&s, "Session refused", false, tls.is_some()))?;
            Ok::<_, SessionEnd>((reporter, response.into_inner()))
        };
        let (mut out, mut inbound) = tokio::select! {
            biased;
            _ = shutdown.as_mut() => return SessionEnd::Shutdown,
            r = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect) => match r {
                Ok(Ok(x)) => x,
                Ok(Err(end)) => return end,
                Err(_) => return SessionEnd::ConnectFailed(format!("no answer within {CONNECT_TIMEOUT_MS} ms")),
            },
        };
        info!(host = %self.host(), coordinator = %addr, last_step = self.last_step, epoch = self.core.highest_epoch(), "coordinator stream open, Hello sent");
        self.metrics.sessions.increment(1);
        let opened = self.core.handle(Event::StreamOpened);
        let end = match self.execute(opened, &mut out).await {
            Err(end) => end,
            Ok(()) => self.drive(addr, &mut out, &mut inbound, shutdown).await,
        };
        self.welcomed_in_session = self.core.welcomed();
        self.metrics.session_up.set(0.0);
        if let SessionEnd::Dropped(reason) | SessionEnd::DiskWrite(reason) = &end {
            // Half-close our side and give the coordinator a moment to read
            // the error we queued before the stream goes away.
            warn!(host = %self.host(), coordinator = %addr, "dropping the coordinator stream: {reason}");
            drop(out);
            let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
            let _ = tokio::time::timeout(Duration::from_millis(DROP_GRACE_MS), drain).await;
        }
        // Whatever ended the stream, the core hears about it. Its actions
        // (abandoning an open transaction) need no stream.
        let closed = self.core.handle(Event::StreamClosed);
        // No stream any more: a report here fails at once instead of waiting.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut detached = Reporter::new(tx);
        let _ = self.execute(closed, &mut detached).await;
        end
    }

    async fn drive(
        &mut self,
        addr: &str,
        out: &mut Reporter,
        inbound: &mut tonic::Streaming<v1::Command>,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> SessionEnd {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await; // the first tick is immediate; Hello just went out
        // Replayed steps since the select below last found nothing else to
        // do. Up to REPLAY_BURST_STEPS of them run without it: a replayed
        // step has no timing of its own, and polling the stream, the
        // heartbeat timer and shutdown before each one cost about as much
        // as the step's own bookkeeping. Once a burst is used up, the
        // select runs until it picks a step again (every command that has
        // arrived is handled first), so a command waits at most one burst.
        let mut burst = 0u32;
        loop {
            let next = self.core.next_step();
            // Replayed steps' reports go out in batches: flush once the
            // host stops replaying (drained, continued live, or waiting
            // for a command: see `Reporter`) or the batch is full. Not
            // when the journal reader is merely behind: that wait is
            // short, and flushing then split most tids into several
            // reports.
            if let Err(end) = out.flush_unless_replaying(matches!(next, Some((_, Mode::Replay)))).await {
                return end;
            }
            let actions = match next {
                Some((tid, Mode::Replay)) if burst < REPLAY_BURST_STEPS => {
                    burst += 1;
                    match self.step(tid, Mode::Replay).await {
                        // All `handle` would do is report the step
                        // (`HostCore::takes_replayed_step`): queue it here.
                        Event::StepFinished { tid, step, checksums, journaled: Some(journaled) } if self.core.takes_replayed_step(tid) => {
                            out.queue_replayed_step(tid, step, &checksums, &journaled);
                            continue;
                        }
                        event => self.core.handle(event),
                    }
                }
                _ => {
                    let step_at = match next {
                        Some((_, Mode::Live)) => self.next_live_step_at,
                        _ => Instant::now(),
                    };
                    tokio::select! {
                        biased;
                        _ = shutdown.as_mut() => return SessionEnd::Shutdown,
                        msg = inbound.message() => match msg {
                            Ok(Some(cmd)) => {
                                let event = match convert::command_from_proto(cmd.command) {
                                    Ok(command) => Event::Command { seq: cmd.seq, epoch: cmd.epoch, command },
                                    Err(reason) => Event::MalformedCommand { seq: cmd.seq, epoch: cmd.epoch, reason },
                                };
                                match &event {
                                    Event::Command { command: crate::core::Command::Stop { reason }, .. } => {
                                        info!(host = %self.host(), state = %self.core.state(), "coordinator asked to stop: {reason}");
                                    }
                                    Event::Command { command: crate::core::Command::Welcome { coordinator_id }, epoch, .. } => {
                                        info!(host = %self.host(), coordinator = %addr, coordinator_id = %coordinator_id, epoch, state = %self.core.state(), "connected: welcomed by the coordinator");
                                    }
                                    _ => {}
                                }
                                debug!(host = %self.host(), ?event, "command");
                                let actions = self.core.handle(event);
                                // Up once the core took a Welcome (a refused
                                // one, e.g. of a stale epoch, leaves it down).
                                self.metrics.session_up.set(if self.core.welcomed() { 1.0 } else { 0.0 });
                                actions
                            }
                            Ok(None) => return SessionEnd::Lost("the coordinator closed the stream".into()),
                            Err(status) => return status_end(&status, "stream ended", true, self.config.tls.is_some()),
                        },
                        _ = heartbeat.tick() => {
                            if let Err(end) = out.send(v1::host_report::Report::Heartbeat(v1::Heartbeat {})).await {
                                return end;
                            }
                            continue;
                        }
                        _ = step_due(step_at), if next.is_some() => {
                            burst = 0;
                            let (tid, mode) = next.expect("guarded by the branch condition");
                            let event = self.step(tid, mode).await;
                            self.core.handle(event)
                        }
                    }
                }
            };
            if let Err(end) = self.execute(actions, out).await {
                return end;
            }
            // Reported (the core turned the failed write into an error
            // report); nothing this process writes can be trusted any more.
            if let Some(reason) = self.disk_failure() {
                if let Err(end) = out.flush().await {
                    return end;
                }
                return SessionEnd::DiskWrite(reason);
            }
        }
    }

    /// Runs the step the core asked for, inside its transaction's span.
    async fn step(&mut self, tid: u64, mode: Mode) -> Event {
        match mode {
            Mode::Live => {
                let span = self.txn.as_ref().map(|t| t.span.clone()).unwrap_or_else(Span::none);
                self.live_step(tid).instrument(span).await
            }
            Mode::Replay => self.replay_step(tid).await,
        }
    }

    // ------------------------------------------------------------ actions

    /// Executes the core's actions in order. If one fails, the rest are
    /// skipped and the core decides what follows from `ActionFailed`.
    ///
    /// A report that cannot be sent (the stream is gone) does not stop the
    /// rest: the core has already moved on (e.g. `Commit{T, next}` is Idle →
    /// OpenLive{next} with `Committed{T}` between `Commit` and `OpenTxn`),
    /// and the engine, journal and accounting must follow it so that the
    /// state kept for the next coordinator (`Hello.resumable`) is whole. The
    /// lost stream is returned once every action ran.
    async fn execute(&mut self, actions: Vec<Action>, out: &mut Reporter) -> Result<(), SessionEnd> {
        let mut queue = VecDeque::from(actions);
        let mut lost: Option<SessionEnd> = None;
        while let Some(action) = queue.pop_front() {
            let result = match action {
                Action::PersistEpoch { epoch } => {
                    let file = self.epoch_file.clone();
                    match self.blocking(move || file.store(epoch)).await {
                        Ok(Ok(())) => {
                            self.metrics.epoch.set(epoch as f64);
                            info!(host = %self.host(), epoch, "new coordinator epoch persisted");
                            Ok(())
                        }
                        // A write to the host's disk, like the journal's.
                        Ok(Err(e)) => Err(Failure { kind: ErrorKind::DiskWrite, tid: 0, message: format!("host {}: {e}", self.host()) }),
                        Err(e) => Err(Failure { kind: ErrorKind::Internal, tid: 0, message: e }),
                    }
                }
                Action::Report(report) => {
                    if let Report::Error { kind, tid, message } = &report {
                        warn!(host = %self.host(), kind = kind.as_str(), tid, "reporting error to the coordinator: {message}");
                        // Every failed write to the data directory passes
                        // here: the agent stops once it is reported.
                        if *kind == ErrorKind::DiskWrite {
                            self.disk_write_failed.get_or_insert_with(|| message.clone());
                        }
                    }
                    // A replayed step's report joins its tid's batch, and a
                    // `Committed` while the host goes on replaying (inside a
                    // replay window, or a Start riding on the Commit) waits
                    // aside, to go out after the batch (`Reporter`). The drive loop
                    // flushes both once the host stops replaying. Every
                    // other report (a live `Committed` too) goes out at
                    // once, behind the queue.
                    let replaying = matches!(self.core.next_step(), Some((_, Mode::Replay)));
                    match report {
                        Report::StepDone { tid, step, checksums, journaled: Some(journaled), mode: Mode::Replay } => {
                            out.queue_replayed_step(tid, step, &checksums, &journaled);
                        }
                        Report::Committed { tid } if replaying => out.set_aside_committed(tid),
                        report => {
                            if let Err(end) = out.send(convert::report_to_proto(report)).await {
                                lost.get_or_insert(end);
                            }
                        }
                    }
                    Ok(())
                }
                Action::OpenTxn { tid, mode } => {
                    self.open_txn(tid, mode);
                    Ok(())
                }
                Action::Prepare { tid } => self.prepare(tid, out).await.unwrap_or_else(|end| {
                    lost.get_or_insert(end);
                    Ok(())
                }),
                Action::RepeatPrepared { tid } => self.repeat_prepared(tid, out).await.unwrap_or_else(|end| {
                    lost.get_or_insert(end);
                    Ok(())
                }),
                Action::Commit { tid } => self.commit(tid).await,
                Action::AbandonTxn { tid } => {
                    warn!(host = %self.host(), tid, steps = self.txn.as_ref().map_or(0, |t| t.steps), "abandoning open transaction {tid}; its steps stay in the journal and are replayed after the next restore");
                    if !self.held_outputs.is_empty() {
                        let held: Vec<u64> = self.held_outputs.iter().map(|h| h.tid).collect();
                        warn!(host = %self.host(), tid, "dropping the held outputs of prepared tids {held:?}; nothing of them was released");
                    }
                    self.txn = None;
                    self.held_outputs.clear();
                    self.reader = None;
                    Ok(())
                }
                Action::Checkpoint { tid } => self.checkpoint(tid).await,
                Action::CheckpointComplete { tid } => self.checkpoint_complete(tid).await,
                Action::Restore { checkpoint_tid } => self.restore(checkpoint_tid).await,
                Action::DropStream { reason } => return Err(SessionEnd::Dropped(reason)),
            };
            if let Err(f) = result {
                error!(host = %self.host(), kind = f.kind.as_str(), tid = f.tid, "{}", f.message);
                queue = self.core.handle(Event::ActionFailed { kind: f.kind, tid: f.tid, message: f.message }).into();
            }
        }
        lost.map_or(Ok(()), Err)
    }

    /// Keeps a prepared tid's outputs until its commit. A replayed tid the
    /// sink already holds keeps no rows: its commit skips them
    /// (`SinkWriter::already_emitted` stays true until a later tid is
    /// submitted, and commits come in tid order), and inside a replay
    /// window dropping them now, while they are hot, costs less than
    /// keeping up to a window of them until their commits.
    fn hold(&mut self, mut held: Held) {
        if self.sink.already_emitted(held.tid) {
            held.rows = None;
        }
        self.held_outputs.push_back(held);
    }

    /// The `Prepared` report sent for `tid`, while its outputs are held.
    fn held_report(&self, tid: u64) -> Option<&v1::Prepared> {
        self.held_outputs.iter().find(|h| h.tid == tid).and_then(|h| h.report.as_ref())
    }

    fn open_txn(&mut self, tid: u64, mode: Mode) {
        // The step is a field of each event inside a step, not of this
        // span: a span field recorded again is appended again by the fmt
        // layer (every line would list every step so far), and formatting
        // it per step cost more than the step's own bookkeeping.
        let span = tracing::info_span!("txn", host = %self.config.host_id, epoch = self.core.highest_epoch(), tid);
        span.in_scope(|| debug!(?mode, "transaction open"));
        self.txn = Some(OpenTxn { tid, mode, steps: 0, records: 0, aggregate: EndpointChecksums::new(), span });
        // Held outputs of earlier prepared tids stay: inside a replay window
        // they await their own commits.
        match mode {
            Mode::Live => {
                // A live tid reads nothing ahead.
                self.reader = None;
                self.next_live_step_at = Instant::now();
            }
            Mode::Replay => {
                // The reader of the tids before this one has read it ahead
                // if it could (`replay_reader`); else a new one starts
                // here. The replay alone opens tids here too, so it reads
                // ahead alike.
                if self.reader.as_ref().and_then(ReplayReader::opens) != Some(tid) {
                    self.reader = Some(ReplayReader::spawn(self.journal.clone(), tid, &self.journal_commits));
                }
            }
        }
    }

    fn account(&mut self, tid: u64, checksums: &EndpointChecksums) {
        if let Some(txn) = self.txn.as_mut().filter(|t| t.tid == tid) {
            let records = checksums.records();
            txn.steps += 1;
            txn.records += records;
            txn.aggregate.merge(checksums);
            self.metrics.step(matches!(txn.mode, Mode::Replay), records);
        }
    }

    async fn live_step(&mut self, tid: u64) -> Event {
        let host = self.config.host_id.clone();
        let step = self.last_step + 1;
        let ctx = StepContext { tid, step, replay: false };
        let fail = |kind, message: String| Event::ActionFailed { kind, tid, message };
        let Some(engine) = self.engine.as_mut() else {
            return fail(ErrorKind::Internal, format!("host {host}: engine missing at live step {step}"));
        };
        let input = match engine.next_input(&ctx) {
            Ok(input) => input,
            Err(e) => return fail(ErrorKind::Engine, format!("host {host}: taking input for step {step} of tid {tid} failed: {e}")),
        };
        // Every endpoint in every step, so journaled and replayed checksums
        // always name the same endpoints.
        let names: BTreeSet<&str> = input.endpoints.iter().map(|e| e.endpoint.as_str()).collect();
        let expected = engine.endpoints();
        if names.len() != input.endpoints.len() || names != expected.iter().map(String::as_str).collect() {
            return fail(
                ErrorKind::Engine,
                format!("host {host}: step {step} of tid {tid}: the engine's input names endpoints {names:?}, but it declares {expected:?} (each exactly once)"),
            );
        }
        let record = pb::JournalRecord {
            kind: Some(pb::journal_record::Kind::Step(pb::StepRecord {
                step,
                prev_step: self.last_step,
                tid,
                epoch: self.core.highest_epoch(),
                endpoints: convert::step_input_to_pb(&input),
            })),
        };
        if self.config.fault_fail_journal_write_at_step == Some(step) {
            warn!(host = %host, step, "fault injection: this step's journal write fails as on a full disk");
            self.journal.inject_write_failure();
        }
        let appended = Instant::now();
        let durable = self.journal.append_async(record).await;
        self.metrics.journal_append.record(appended.elapsed().as_secs_f64());
        if let Err(e) = durable {
            return fail(
                ErrorKind::DiskWrite,
                format!("host {host}: journaling step {step} of tid {tid} failed: {e}; the step was not run and not reported. Check the disk under {}", self.config.data_dir.display()),
            );
        }
        self.last_step = step;
        // Queued before the step, so durable with it.
        self.marker = None;
        self.markers_queued = 0;
        let engine = self.engine.as_mut().expect("checked above");
        engine.input_durable(tid, step);
        let checksums = match engine.step(&ctx, &input) {
            Ok(c) => c,
            Err(e) => return fail(ErrorKind::Engine, format!("host {host}: engine step {step} of tid {tid} failed: {e}")),
        };
        // Live, the engine must ingest exactly what was journaled; anything
        // else would only surface as a replay divergence much later.
        let journaled = input.checksums();
        let diff = journaled.diff(&checksums);
        if !diff.is_empty() {
            let diff: Vec<String> = diff.iter().map(ToString::to_string).collect();
            return fail(
                ErrorKind::Engine,
                format!("host {host}: live step {step} of tid {tid}: the engine ingested something other than the journaled input: {}", diff.join("; ")),
            );
        }
        self.account(tid, &checksums);
        self.next_live_step_at = Instant::now() + self.config.step_interval;
        Event::StepFinished { tid, step, checksums, journaled: None }
    }

    /// Runs the next journaled step of `tid`. Only its synchronous part
    /// runs inside the transaction's span (`in_scope`): instrumenting the
    /// whole future per step cloned, entered, exited and closed the span
    /// around every step, about 2% of a replaying host's CPU, and the wait
    /// for the journal reader logs nothing.
    async fn replay_step(&mut self, tid: u64) -> Event {
        let Some(reader) = self.reader.as_mut().filter(|r| r.is_at(tid)) else {
            let host = &self.config.host_id;
            return Event::ActionFailed { kind: ErrorKind::Internal, tid, message: format!("host {host}: replaying tid {tid} without a journal reader") };
        };
        let received = reader.next_step(tid).await;
        if let Some(delay) = self.config.fault_replay_step_delay {
            tokio::time::sleep(delay).await;
        }
        // Lent out of the transaction for the step, so that the step may
        // borrow `self` mutably; it goes back to the same transaction.
        let span = self.txn.as_mut().map(|t| std::mem::replace(&mut t.span, Span::none())).unwrap_or_else(Span::none);
        let event = span.in_scope(|| self.replayed_step(tid, received));
        if let Some(txn) = self.txn.as_mut() {
            txn.span = span;
        }
        event
    }

    /// `replay_step` once the journal reader answered: runs the journaled
    /// step through the engine and accounts for it.
    fn replayed_step(&mut self, tid: u64, received: Option<Result<pb::StepRecord, JournalError>>) -> Event {
        let host = &self.config.host_id;
        let fail = |kind, message: String| Event::ActionFailed { kind, tid, message };
        let record = match received {
            None => {
                // The reader moved on to the next tid, if it reads one.
                if self.reader.as_ref().is_some_and(|r| r.opens().is_none()) {
                    self.reader = None;
                }
                return Event::ReplayExhausted { tid, commit_marker: self.journal_commits.contains(&tid) };
            }
            Some(Err(e)) => return fail(ErrorKind::Journal, format!("host {host}: reading the journaled steps of tid {tid} failed: {e}")),
            Some(Ok(record)) => record,
        };
        let step = record.step;
        if record.tid != tid {
            return fail(ErrorKind::Journal, format!("host {host}: the journal returned step {step} of tid {} while replaying tid {tid}", record.tid));
        }
        if let Some(prev) = self.replay_prev_step {
            if record.prev_step != prev {
                return fail(
                    ErrorKind::Journal,
                    format!("host {host}: journal gap in tid {tid}: step {step} names step {} as its previous step, but the previous replayed step was {prev}; steps are missing from the journal", record.prev_step),
                );
            }
        }
        let input = match convert::step_input_from_pb(&record.endpoints) {
            Ok(input) => input,
            Err(e) => return fail(ErrorKind::Journal, format!("host {host}: journaled step {step} of tid {tid} is malformed: {e}")),
        };
        let journaled = input.checksums();
        let ctx = StepContext { tid, step, replay: true };
        let Some(engine) = self.engine.as_mut() else {
            return fail(ErrorKind::Internal, format!("host {host}: engine missing at replayed step {step}"));
        };
        let checksums = match engine.step(&ctx, &input) {
            Ok(c) => c,
            Err(e) => return fail(ErrorKind::Engine, format!("host {host}: replaying step {step} of tid {tid} failed: {e}")),
        };
        if checksums != journaled {
            // Not ours to judge: the coordinator compares and diagnoses.
            warn!(host = %host, tid, step, "replayed step ingested something other than the journal recorded");
        }
        self.replay_prev_step = Some(step);
        self.account(tid, &checksums);
        Event::StepFinished { tid, step, checksums, journaled: Some(journaled) }
    }

    async fn prepare(&mut self, tid: u64, out: &mut Reporter) -> Result<Result<(), Failure>, SessionEnd> {
        let host = self.config.host_id.clone();
        let Some(txn) = self.txn.as_ref().filter(|t| t.tid == tid) else {
            return Ok(Err(Failure { kind: ErrorKind::Internal, tid, message: format!("host {host}: Prepare of tid {tid} with no accounting for it") }));
        };
        let (steps, records, aggregate, span, txn_mode) = (txn.steps, txn.records, txn.aggregate.clone(), txn.span.clone(), txn.mode);
        let Some(engine) = self.engine.as_mut() else {
            return Ok(Err(Failure { kind: ErrorKind::Internal, tid, message: format!("host {host}: engine missing at prepare") }));
        };
        let rows = engine.take_outputs(tid);
        let digest = output_digest(&rows);
        let meta = engine.output_metadata();
        span.in_scope(|| debug!(steps, records, rows = rows.len(), "prepared"));
        // A replayed tid's reader stays: it reads the next tids ahead. A
        // live tid reads nothing ahead.
        if txn_mode == Mode::Live {
            self.reader = None;
        }
        let report = v1::Prepared {
            tid,
            steps,
            aggregate: convert::checksums_to_proto(&aggregate),
            output_digest: digest.hash,
            output_count: digest.count,
        };
        self.hold(Held { tid, rows: Some(rows), meta, report: Some(report.clone()) });
        out.queue_prepared(report);
        Ok(Ok(()))
    }

    /// The `Prepared` report of `tid` again, for a coordinator on a new
    /// stream (`Action::RepeatPrepared`).
    async fn repeat_prepared(&mut self, tid: u64, out: &mut Reporter) -> Result<Result<(), Failure>, SessionEnd> {
        match self.held_report(tid).cloned() {
            Some(report) => {
                info!(host = %self.host(), tid, steps = report.steps, "sending the Prepared report of tid {tid} again to this coordinator");
                out.send(v1::host_report::Report::Prepared(report)).await?;
                Ok(Ok(()))
            }
            None => Ok(Err(Failure {
                kind: ErrorKind::Internal,
                tid,
                message: format!("host {}: asked to repeat the Prepared report of tid {tid}, but none is kept", self.host()),
            })),
        }
    }

    async fn commit(&mut self, tid: u64) -> Result<(), Failure> {
        let host = self.config.host_id.clone();
        let epoch = self.core.highest_epoch();
        let fail = |kind, message| Failure { kind, tid, message };
        if !self.journal_commits.contains(&tid) {
            let marker = pb::JournalRecord { kind: Some(pb::journal_record::Kind::Commit(pb::CommitMarker { tid, epoch })) };
            // Deferred, not waited for: it becomes durable with the next
            // append (the next tid's first step, a checkpoint record), in
            // the same write and fdatasync, instead of costing an fdatasync
            // of its own just before that step's. The ledger is the record
            // that `tid` committed, and a marker lost to a crash is the same
            // as a crash just before `Commit` arrived (recovery replays
            // `tid` with `prepare`, the sink skips what it holds). Anything
            // journaled after it is durable only together with it, since
            // the journal syncs in append order; a failed sync poisons the
            // journal, so the next append fails and the host stops. A Hello
            // summarises the journal only after every queued marker is
            // durable (`markers_durable`).
            self.marker = Some(Box::pin(self.journal.append_deferred(marker)));
            self.markers_queued += 1;
            self.journal_commits.insert(tid);
            if self.markers_queued >= MARKERS_QUEUED_MAX {
                // A long replay of tids whose markers were lost appends no
                // step to carry them.
                self.markers_durable().await.map_err(|e| fail(ErrorKind::DiskWrite, e))?;
            }
        }
        // Commits come in tid order (the core checks), so `tid` is the
        // oldest held.
        let (rows, meta) = match self.held_outputs.pop_front() {
            Some(h) if h.tid == tid => (h.rows, h.meta),
            other => {
                return Err(fail(ErrorKind::Internal, format!("host {host}: commit of tid {tid}, but the oldest held outputs are of tid {:?}", other.map(|h| h.tid))))
            }
        };
        let row_count = rows.as_ref().map_or(0, Vec::len);
        // Handed to the sink writer, not waited for: its write and
        // fdatasync happen on its own thread while this host opens the next
        // tid and answers the next command. Safe because the ledger is the
        // record that `tid` committed: a tid whose line a crash lost is
        // replayed after recovery (the sink skips the tids it holds), and
        // everything that needs the sink to hold every committed tid (a
        // checkpoint, a restore, shutdown) waits for the writer first. An
        // earlier tid's failed write surfaces here. A replayed tid the sink
        // holds or has queued is skipped without the engine's metadata.
        let outcome = match rows {
            _ if self.sink.already_emitted(tid) => EmitOutcome::AlreadyEmitted,
            Some(rows) => self
                .sink
                .submit(SinkBatch { epoch, tid, rows, meta })
                .await
                .map_err(|e| Self::sink_failure(tid, format!("host {host}: releasing tid {tid} to the sink failed: {e}"), &e))?,
            None => {
                return Err(fail(
                    ErrorKind::Internal,
                    format!("host {host}: the outputs of tid {tid} were dropped at prepare because the sink held it, but now the sink does not; nothing was released, and a restore replays it"),
                ))
            }
        };
        self.metrics.tids_committed.increment(1);
        self.metrics.last_committed_tid.set(tid as f64);
        // Inside a replay window the open transaction is already a later tid.
        if let Some(txn) = self.txn.take_if(|t| t.tid == tid) {
            txn.span.in_scope(|| match outcome {
                EmitOutcome::Written | EmitOutcome::Queued => {
                    debug!(steps = txn.steps, records = txn.records, rows = row_count, mode = ?txn.mode, "committed")
                }
                EmitOutcome::AlreadyEmitted => debug!(steps = txn.steps, "committed (replayed; the sink already held it)"),
            });
        }
        Ok(())
    }

    /// A sink writer failure as the error to report: a failed write to the
    /// disk is `DiskWrite` (the agent stops after reporting it); anything
    /// else (a bug, a thread gone) is `Sink`.
    fn sink_failure(tid: u64, message: String, e: &SinkWriterError) -> Failure {
        let disk = matches!(e, SinkWriterError::Write { cause, .. } if matches!(**cause, SinkError::Io { .. }));
        Failure { kind: if disk { ErrorKind::DiskWrite } else { ErrorKind::Sink }, tid, message }
    }

    /// Why this agent must stop, if it must: it reported a failed write to
    /// its data directory. Checked after every batch of actions, so the
    /// usual answer costs no lock; the journal's own reason is preferred.
    fn disk_failure(&self) -> Option<String> {
        let reported = self.disk_write_failed.as_ref()?;
        Some(self.journal_refuses().unwrap_or_else(|| reported.clone()))
    }

    /// Why the journal refuses writes, if it does (one failed).
    fn journal_refuses(&self) -> Option<String> {
        self.journal.poisoned().map(|reason| format!("the journal refuses writes after one failed: {reason}"))
    }

    /// Makes every queued commit marker durable.
    async fn markers_durable(&mut self) -> Result<(), String> {
        self.markers_queued = 0;
        let Some(newest) = self.marker.take() else { return Ok(()) };
        self.journal.commit_queued();
        newest.await.map(drop).map_err(|e| {
            format!(
                "host {}: journaling a commit marker failed: {e}; check the disk under {}",
                self.config.host_id,
                self.config.data_dir.display()
            )
        })
    }

    async fn checkpoint(&mut self, tid: u64) -> Result<(), Failure> {
        let host = self.config.host_id.clone();
        let fail = |kind, message| Failure { kind, tid, message };
        // Once a checkpoint of `tid` is complete, recovery starts after it
        // and never replays `tid` or any tid before it again: the sink must
        // hold all of them durably before the checkpoint exists at all.
        if let Err(e) = self.sink.sync().await {
            let message = format!("host {host}: checkpoint {tid} not taken: the sink does not hold every committed tid: {e}");
            return Err(Self::sink_failure(tid, message, &e));
        }
        let dir = self.config.data_dir.join("checkpoints");
        let Some(mut engine) = self.engine.take() else {
            return Err(fail(ErrorKind::Internal, format!("host {host}: engine missing at checkpoint")));
        };
        let (engine, result) = {
            let dir = dir.clone();
            self.blocking(move || {
                let r = engine.checkpoint(&dir, tid);
                (engine, r)
            })
            .await
            .map_err(|e| fail(ErrorKind::Internal, format!("host {host}: engine checkpoint {tid} panicked: {e}")))?
        };
        self.engine = Some(engine);
        let path = match result {
            Ok(path) => path,
            // A full disk, as for the journal and the sink: the host is
            // lost, not the pipeline failed, and the agent stops. Nothing
            // is lost with the checkpoint: the one before it stays.
            Err(e @ crate::engine::EngineError::Io { .. }) => {
                return Err(fail(ErrorKind::DiskWrite, format!("host {host}: writing checkpoint {tid} failed: {e}")))
            }
            Err(e) => return Err(fail(ErrorKind::Checkpoint, format!("host {host}: writing checkpoint {tid} failed: {e}"))),
        };
        let location = path.strip_prefix(&self.config.data_dir).unwrap_or(&path).to_string_lossy().into_owned();
        let record = pb::JournalRecord { kind: Some(pb::journal_record::Kind::Checkpoint(pb::CheckpointRecord { tid, location })) };
        self.journal.append_async(record).await.map_err(|e| {
            fail(ErrorKind::DiskWrite, format!("host {host}: journaling checkpoint record {tid} failed: {e}; the checkpoint file {} is not offered", path.display()))
        })?;
        info!(host = %host, tid, file = %path.display(), "checkpoint written");
        self.metrics.checkpoints.increment(1);
        self.checkpoints.insert(tid, path);
        Ok(())
    }

    async fn checkpoint_complete(&mut self, tid: u64) -> Result<(), Failure> {
        let host = self.config.host_id.clone();
        let fail = |kind, message| Failure { kind, tid, message };
        if tid <= self.complete_tid {
            debug!(host = %host, tid, "checkpoint {tid} already known complete");
            return Ok(());
        }
        if !self.checkpoints.contains_key(&tid) {
            return Err(fail(
                ErrorKind::Checkpoint,
                format!("host {host}: the ledger says checkpoint {tid} is complete, but this host does not hold it (it holds {:?}); nothing was deleted", self.checkpoints.keys().collect::<Vec<_>>()),
            ));
        }
        let file = self.complete_file.clone();
        self.blocking(move || file.store(tid))
            .await
            .map_err(|e| fail(ErrorKind::Internal, e))?
            .map_err(|e| fail(ErrorKind::DiskWrite, format!("host {host}: {e}")))?;
        self.complete_tid = tid;
        // Delete older checkpoints and any file in the checkpoint directory
        // that is not a held checkpoint (a crash between writing a
        // checkpoint and journaling its record leaves such orphans).
        let keep: BTreeSet<PathBuf> = self.checkpoints.range(tid..).map(|(_, p)| p.clone()).collect();
        self.checkpoints.retain(|t, _| *t >= tid);
        let dir = self.config.data_dir.join("checkpoints");
        let journal = self.journal.clone();
        let h = host.clone();
        let deleted = self
            .blocking(move || -> Result<(usize, usize), String> {
                let mut removed = 0;
                let entries = std::fs::read_dir(&dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
                for entry in entries.flatten() {
                    let path = entry.path();
                    if keep.contains(&path) {
                        continue;
                    }
                    let r = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                    match r {
                        Ok(()) => removed += 1,
                        Err(e) => warn!(host = %h, file = %path.display(), "cannot delete old checkpoint: {e}"),
                    }
                }
                fsync_dir(&dir).map_err(|e| format!("fsync {}: {e}", dir.display()))?;
                let segments = journal.gc_before_checkpoint(tid).map_err(|e| format!("journal gc before checkpoint {tid}: {e}"))?;
                Ok((removed, segments))
            })
            .await
            .map_err(|e| fail(ErrorKind::Internal, e))?
            .map_err(|e| fail(ErrorKind::Checkpoint, format!("host {host}: {e}")))?;
        self.journal_commits.retain(|t| *t > tid);
        info!(host = %host, tid, checkpoints_deleted = deleted.0, segments_deleted = deleted.1, "checkpoint {tid} complete; older data deleted");
        Ok(())
    }

    async fn restore(&mut self, checkpoint_tid: u64) -> Result<(), Failure> {
        let host = self.config.host_id.clone();
        let fail = |kind, message| Failure { kind, tid: checkpoint_tid, message };
        let path = if checkpoint_tid == 0 {
            None
        } else {
            match self.checkpoints.get(&checkpoint_tid) {
                Some(p) => Some(p.clone()),
                None => {
                    return Err(fail(
                        ErrorKind::Checkpoint,
                        format!("host {host}: asked to restore checkpoint {checkpoint_tid}, but this host holds only {:?} (0 = empty state)", self.checkpoints.keys().collect::<Vec<_>>()),
                    ))
                }
            }
        };
        // The replay after a restore skips every tid the sink holds or has
        // queued; settle the queue first, so that a failed write is
        // reported here and re-arms the writer at the last durable tid (the
        // replay then writes the rest).
        if let Err(e) = self.sink.sync().await {
            let message = format!("host {host}: restoring checkpoint {checkpoint_tid}: {e}");
            return Err(Self::sink_failure(checkpoint_tid, message, &e));
        }
        let Some(mut engine) = self.engine.take() else {
            return Err(fail(ErrorKind::Internal, format!("host {host}: engine missing at restore")));
        };
        let (engine, result) = {
            let path = path.clone();
            self.blocking(move || {
                let r = engine.restore(path.as_deref());
                (engine, r)
            })
            .await
            .map_err(|e| fail(ErrorKind::Internal, format!("host {host}: engine restore panicked: {e}")))?
        };
        self.engine = Some(engine);
        // Kind "checkpoint": what could not be restored is this checkpoint
        // (its file, as the message says), whatever the engine found wrong.
        result.map_err(|e| fail(ErrorKind::Checkpoint, format!("host {host}: restoring checkpoint {checkpoint_tid} failed: {e}")))?;
        self.sink.expect_replay();
        self.txn = None;
        self.held_outputs.clear();
        self.reader = None;
        self.replay_prev_step = None;
        self.metrics.restores.increment(1);
        info!(host = %host, checkpoint_tid, "engine restored");
        Ok(())
    }
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
