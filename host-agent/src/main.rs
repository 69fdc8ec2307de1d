//! The `host-agent` daemon: the Lockstep host agent around the reference
//! engine. Flags have matching `LOCKSTEP_*` environment variables; logs go
//! through tracing (text or JSON); SIGTERM and Ctrl-C stop it gracefully.

use anyhow::Context;
use clap::{Parser, ValueEnum};
use lockstep_host_agent::metrics::MetricsListen;
use lockstep_host_agent::{run_reference, HostConfig, ReferenceConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// mimalloc rather than glibc's malloc: a replayed step's records are
/// allocated on the journal reader's thread and freed on the replaying
/// one, which glibc serves through a locked foreign arena. Replay is
/// ~17-20% faster in both modes and uses ~18% less CPU (README, "Latest
/// numbers", session 11). Built with `no_thp`: with transparent huge
/// pages on `madvise`, mimalloc's huge-page arenas had tripled RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Lockstep host agent: journals this host's input, runs engine steps inside
/// coordinator-driven transactions, and replays them after a crash.
#[derive(Debug, Parser)]
#[command(name = "host-agent", version)]
struct Args {
    /// Stable id of this host (e.g. a StatefulSet ordinal); written into the journal.
    #[arg(long, env = "LOCKSTEP_HOST_ID")]
    host_id: String,

    /// Cluster this host belongs to; a journal of another cluster is refused.
    #[arg(long, env = "LOCKSTEP_CLUSTER_ID", default_value = "lockstep-dev")]
    cluster_id: String,

    /// Every coordinator of the group, comma-separated, as host:port (dialed
    /// with TLS when the TLS flags are given) or http://host:port /
    /// https://host:port: tried in turn, and a follower's redirect to the
    /// leader is followed.
    #[arg(long, env = "LOCKSTEP_COORDINATOR", default_value = "127.0.0.1:50051", value_delimiter = ',')]
    coordinator: Vec<String>,

    /// Data directory (journal, checkpoints, sink, epoch) [default: ./lockstep-data/{host-id}].
    #[arg(long, env = "LOCKSTEP_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Address of the push-ingest, health and reflection gRPC API (port 0 = any free port).
    #[arg(long, env = "LOCKSTEP_INGEST_LISTEN", default_value = "127.0.0.1:0")]
    ingest_listen: SocketAddr,

    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this
    /// address, e.g. 0.0.0.0:9465, or `off`.
    #[arg(long, env = "LOCKSTEP_METRICS_LISTEN", default_value = "off")]
    metrics_listen: MetricsListen,

    /// Seed of the reference engine's generator.
    #[arg(long, env = "LOCKSTEP_GENERATOR_SEED", default_value_t = 42)]
    generator_seed: u64,

    /// Largest generator batch per step (batch sizes vary in 0..=max).
    #[arg(long, env = "LOCKSTEP_GENERATOR_BATCH_MAX", default_value_t = 50)]
    generator_batch_max: u64,

    /// How long a Push waits for a live transaction to take its records;
    /// past it they are withdrawn (not ingested) and the client is told to
    /// push them again. Covers a leader change or a recovery.
    #[arg(long, env = "LOCKSTEP_PUSH_WAIT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    push_wait_secs: u64,

    /// Pause between live steps, in milliseconds.
    #[arg(long, env = "LOCKSTEP_STEP_INTERVAL_MS", default_value_t = 10)]
    step_interval_ms: u64,

    /// Log format.
    #[arg(long, env = "LOCKSTEP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(flatten)]
    tls: lockstep_host_agent::tls::TlsArgs,

    /// Also serve `grpc.health.v1.Health`, and nothing else, in plaintext on
    /// this address (e.g. 0.0.0.0:50053): for Kubernetes' gRPC probes, which
    /// speak no TLS, when --tls-cert is given.
    #[arg(long, env = "LOCKSTEP_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,

    /// Benchmark baseline: replay this host's journal with no coordinator
    /// (restore the newest checkpoint known complete, run every journaled
    /// tid through the engine exactly like a replay, commit it), print one
    /// JSON line with records/s to stdout and exit. Needs no coordinator.
    #[arg(long)]
    replay_alone: bool,

    /// With --replay-alone: replay every journaled tid up to this one (the
    /// ledger's last committed tid); default: the tids with a commit marker.
    #[arg(long, requires = "replay_alone")]
    replay_through_tid: Option<u64>,

    /// With --replay-alone: once the engine is restored, print
    /// `{"ready": <host id>}` on stdout and start replaying only when a line
    /// (or the end of input) arrives on stdin. A benchmark starts several
    /// hosts' replays at one instant with it.
    #[arg(long, requires = "replay_alone")]
    replay_start_on_stdin: bool,

    /// Test only: make replay diverge (drops a generator record of the first replayed step).
    #[arg(long, env = "LOCKSTEP_FAULT_NONDETERMINISTIC_REPLAY", hide = true)]
    fault_nondeterministic_replay: bool,

    /// Test only: the journal write of this live step fails as on a full disk.
    #[arg(long, hide = true)]
    fault_fail_journal_write_at_step: Option<u64>,

    /// Test only: the sink write of this tid fails as on a full disk.
    #[arg(long, hide = true)]
    fault_fail_sink_write_at_tid: Option<u64>,

    /// Test only: every replayed step waits this many ms first (a replay
    /// slow enough to watch).
    #[arg(long, hide = true)]
    fault_replay_step_delay_ms: Option<u64>,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal (as the coordinator): log files and log
    // collectors get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    // First of all: see `signals::hold`.
    lockstep_host_agent::signals::hold().context("cannot hold SIGTERM and SIGINT until the agent listens for them")?;
    let args = Args::parse();
    init_tracing(args.log_format);
    let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("lockstep-data").join(&args.host_id));
    let mut config = HostConfig::new(args.host_id.clone(), args.coordinator.clone(), data_dir);
    config.cluster_id = args.cluster_id.clone();
    config.ingest_listen = args.ingest_listen;
    config.health_listen = args.health_listen;
    config.step_interval = Duration::from_millis(args.step_interval_ms);
    config.fault_fail_journal_write_at_step = args.fault_fail_journal_write_at_step;
    config.fault_fail_sink_write_at_tid = args.fault_fail_sink_write_at_tid;
    config.fault_replay_step_delay = args.fault_replay_step_delay_ms.map(Duration::from_millis);
    if let Some(ms) = args.fault_replay_step_delay_ms {
        tracing::warn!(host = %args.host_id, "fault injection enabled: every replayed step waits {ms} ms (test only)");
    }
    if !args.replay_alone {
        config.tls = args.tls.load().with_context(|| format!("host agent {}", args.host_id))?;
    }
    let reference = ReferenceConfig {
        host_id: args.host_id.clone(),
        generator_seed: args.generator_seed,
        generator_batch_max: args.generator_batch_max,
        fault_nondeterministic_replay: args.fault_nondeterministic_replay,
        push_wait: Duration::from_secs(args.push_wait_secs),
    };
    if args.fault_nondeterministic_replay {
        tracing::warn!(host = %args.host_id, "fault injection enabled: replay will diverge (test only)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    if args.replay_alone {
        // A benchmark baseline with nothing to stop cleanly: Ctrl-C kills it.
        lockstep_host_agent::signals::release().context("cannot release SIGTERM and SIGINT")?;
        let engine = lockstep_host_agent::ReferenceEngine::new(reference);
        let host_id = args.host_id.clone();
        let gate = async move {
            if args.replay_start_on_stdin {
                start_on_stdin(&host_id).await;
            }
        };
        let r = runtime
            .block_on(lockstep_host_agent::replay_alone(config, engine, args.replay_through_tid, gate))
            .with_context(|| format!("host agent {}: replay alone failed", args.host_id))?;
        let per_s = if r.micros == 0 { 0.0 } else { r.records as f64 * 1e6 / r.micros as f64 };
        let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
        println!(
            "{}",
            serde_json::json!({
                "host": args.host_id, "checkpoint": r.checkpoint, "tids": r.tids, "steps": r.steps,
                "records": r.records, "micros": r.micros, "cpu_micros": r.cpu_micros, "records_per_s": per_s,
                "started_unix_us": now_us.saturating_sub(r.micros),
            })
        );
        return Ok(());
    }
    // Before anything is opened: see `signals`.
    let stop = {
        let _guard = runtime.enter();
        lockstep_host_agent::signals::stop_requested().context("cannot listen for SIGTERM and SIGINT")?
    };
    let host_id = args.host_id.clone();
    let stop = async move {
        let signal = stop.await;
        tracing::info!(host = %host_id, "{signal} received, shutting down");
    };
    if let Some(addr) = args.metrics_listen.0 {
        // The exporter's listener runs on this runtime.
        let _guard = runtime.enter();
        lockstep_host_agent::metrics::install_prometheus(addr).map_err(|e| anyhow::anyhow!("host agent {}: {e}", args.host_id))?;
        tracing::info!(host = %args.host_id, %addr, "serving Prometheus metrics at http://{addr}/metrics");
    }
    let result = runtime.block_on(run_reference(config, reference, stop));
    lockstep_host_agent::signals::exit_now(runtime);
    result.with_context(|| format!("host agent {} failed", args.host_id))
}

/// `--replay-start-on-stdin`: says it is ready on stdout, then waits for a
/// line on stdin (or its end: a parent that went away releases the host
/// rather than leaving it stuck).
async fn start_on_stdin(host_id: &str) {
    use std::io::Write;
    use tokio::io::AsyncBufReadExt;
    let mut out = std::io::stdout().lock();
    // A closed stdout only means nobody waits for the line.
    let _ = writeln!(out, "{}", serde_json::json!({ "ready": host_id })).and_then(|()| out.flush());
    drop(out);
    let mut line = String::new();
    if let Err(e) = tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line).await {
        tracing::warn!(host = %host_id, "reading the start line from stdin failed ({e}); starting the replay now");
    }
}
