//! `coordinator` daemon: `serve` runs one coordinator; `dev` runs a whole
//! local cluster (coordinator and host agents) on embedded defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use lockstep_coordinator::core::CoreConfig;
use lockstep_coordinator::raft::{Ledger, RaftTuning};
use lockstep_coordinator::service::{self, SupervisorConfig};
use lockstep_host_agent::metrics::MetricsListen;
use tokio::sync::watch;
use tracing::{info, warn};

/// mimalloc, as in the host agent (see its `main.rs`): with both daemons
/// on it the replay benchmark used ~18% less CPU (README, "Latest
/// numbers", session 11); the coordinator's share was not measured
/// apart. Built with `no_thp`, for the same reason as there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "coordinator", version, about = "Lockstep coordinator: drives fault-tolerant transactions across hosts")]
struct Cli {
    /// `json`: one JSON object per line, for log collectors.
    #[arg(long, env = "LOCKSTEP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Threads of the async runtime. 1 (the default) runs everything on one
    /// thread, raft log appends included: the lowest commit latency, since
    /// a decision never waits for another thread to wake. More threads
    /// spread gRPC work over cores (large clusters) at a few tens of µs per
    /// hand-off; appends then run on the blocking pool.
    #[arg(long, env = "LOCKSTEP_WORKER_THREADS", default_value_t = 1, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at start: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run one coordinator node.
    Serve(ServeArgs),
    /// Run a local cluster: a coordinator on 127.0.0.1:50051 and host agents,
    /// data under ./lockstep-data. Ctrl-C stops it; rerunning recovers.
    Dev(DevArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address for HostSession, Admin, health and reflection.
    #[arg(long, env = "LOCKSTEP_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Where the ledger (raft log, snapshots) lives.
    #[arg(long, env = "LOCKSTEP_DATA_DIR", default_value = "./lockstep-data/coordinator")]
    data_dir: PathBuf,
    /// Name of the cluster, fixed when its ledger is created; a host agent
    /// with another --cluster-id is refused, so journals of two clusters
    /// never mix.
    #[arg(long, env = "LOCKSTEP_CLUSTER_ID", default_value = "lockstep-dev")]
    cluster_id: String,
    /// Host ids of a new cluster, comma-separated (fixed when the cluster is created: once the ledger exists it is
    /// ignored, with a warning if it differs).
    #[arg(long, env = "LOCKSTEP_HOSTS", value_delimiter = ',', default_value = "host-0,host-1")]
    hosts: Vec<String>,
    /// This node's raft id (a positive number), or `auto`: the StatefulSet
    /// ordinal at the end of the hostname plus one (`coordinator-2` -> 3).
    #[arg(long, env = "LOCKSTEP_NODE_ID", default_value = "1")]
    node_id: NodeIdArg,
    /// The coordinator group, comma-separated `id=host:port`, this node
    /// included; the smallest id initialises a new group. Without it this
    /// node is a group of one.
    #[arg(long, env = "LOCKSTEP_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    peers: Vec<(u64, String)>,
    /// host:port the other coordinators and redirected hosts reach this node
    /// at. Default: this node's entry in --peers, else the --listen address.
    #[arg(long, env = "LOCKSTEP_ADVERTISE")]
    advertise: Option<String>,
    /// Start without a group and wait to be added to an existing one
    /// (Admin/AddNode on its leader).
    #[arg(long, env = "LOCKSTEP_JOIN", conflicts_with = "peers")]
    join: bool,
    /// Bound on a ledger write: a leader that cannot commit within it (cut
    /// off from the group's quorum) stops driving the pipeline.
    #[arg(long, env = "LOCKSTEP_PROPOSE_TIMEOUT_MS", default_value_t = 5000)]
    propose_timeout_ms: u64,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this
    /// address, e.g. 0.0.0.0:9464, or `off`.
    #[arg(long, env = "LOCKSTEP_METRICS_LISTEN", default_value = "off")]
    metrics_listen: MetricsListen,
    /// Also serve `grpc.health.v1.Health`, and nothing else, in plaintext on
    /// this address (e.g. 0.0.0.0:50052): for Kubernetes' gRPC probes,
    /// which speak no TLS, when --tls-cert is given.
    #[arg(long, env = "LOCKSTEP_HEALTH_LISTEN")]
    health_listen: Option<String>,
    #[command(flatten)]
    tls: lockstep_host_agent::tls::TlsArgs,
    /// With TLS: each host agent's client certificate must be valid for
    /// this DNS name, `{host}` standing for the host id it says it is
    /// (e.g. `{host}.host-peers.lockstep.svc`), so that no host can join as
    /// another. Without it, any certificate the CA signed may claim any host.
    #[arg(long, env = "LOCKSTEP_TLS_HOST_NAME", requires = "tls_cert")]
    tls_host_name: Option<lockstep_host_agent::tls::HostNames>,
    /// With TLS: the Admin calls that change the cluster (Checkpoint, Stop,
    /// Resume, AddNode, RemoveNode) are taken only from a client
    /// certificate valid for this DNS name (e.g. `admin.lockstep`); reads
    /// (GetStatus, List*, GetTransaction, ExplainFailure, WatchEvents) stay
    /// open to every certificate of the CA. Without it, any may change it.
    #[arg(long, env = "LOCKSTEP_TLS_ADMIN_NAME", requires = "tls_cert")]
    tls_admin_name: Option<lockstep_host_agent::tls::AdminName>,
    #[command(flatten)]
    raft: RaftArgs,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// Raft timing of the coordinator group. A dead leader is replaced after
/// about election-max (the followers' leader lease) plus a random pick in
/// [election-min, election-max]; heartbeats must arrive well within
/// election-min even on a busy machine, or healthy leaders get deposed.
#[derive(Args, Clone)]
struct RaftArgs {
    /// How often the raft leader heartbeats its followers (ms).
    #[arg(long, env = "LOCKSTEP_RAFT_HEARTBEAT_MS", default_value_t = 20)]
    raft_heartbeat_ms: u64,
    /// Shortest wait without a leader's heartbeat before a follower stands
    /// for election (ms); keep it several heartbeats long.
    #[arg(long, env = "LOCKSTEP_RAFT_ELECTION_MIN_MS", default_value_t = 80)]
    raft_election_min_ms: u64,
    /// Longest such wait (ms); a dead leader is replaced after about this
    /// plus a random pick between the two.
    #[arg(long, env = "LOCKSTEP_RAFT_ELECTION_MAX_MS", default_value_t = 120)]
    raft_election_max_ms: u64,
    /// TEST ONLY: every raft log append after the first N fails as on a
    /// full disk, so the full-disk path can be exercised.
    #[arg(long, env = "LOCKSTEP_FAULT_FAIL_LOG_APPENDS_AFTER", hide = true)]
    fault_fail_log_appends_after: Option<u64>,
}

impl RaftArgs {
    fn tuning(&self) -> anyhow::Result<RaftTuning> {
        let (h, min, max) = (self.raft_heartbeat_ms, self.raft_election_min_ms, self.raft_election_max_ms);
        if h == 0 || min <= h || max <= min {
            bail!(
                "raft timing needs 0 < --raft-heartbeat-ms ({h}) < --raft-election-min-ms ({min}) < --raft-election-max-ms ({max})"
            );
        }
        Ok(RaftTuning {
            heartbeat_ms: h,
            election_timeout_min_ms: min,
            election_timeout_max_ms: max,
            fault_fail_log_appends_after: self.fault_fail_log_appends_after,
            ..RaftTuning::default()
        })
    }
}

impl Default for RaftArgs {
    fn default() -> Self {
        RaftArgs { raft_heartbeat_ms: 20, raft_election_min_ms: 80, raft_election_max_ms: 120, fault_fail_log_appends_after: None }
    }
}

/// `--node-id`: a number, or derived from the hostname.
#[derive(Clone, Copy, Debug)]
enum NodeIdArg {
    Fixed(u64),
    Auto,
}

impl std::str::FromStr for NodeIdArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(NodeIdArg::Auto);
        }
        match s.parse::<u64>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is not a node id: use a positive number, or `auto`")),
            Ok(n) => Ok(NodeIdArg::Fixed(n)),
        }
    }
}

impl NodeIdArg {
    fn resolve(self) -> anyhow::Result<u64> {
        match self {
            NodeIdArg::Fixed(n) => Ok(n),
            NodeIdArg::Auto => {
                let host = std::env::var("HOSTNAME")
                    .ok()
                    .filter(|h| !h.is_empty())
                    .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                    .map(|h| h.trim().to_string())
                    .unwrap_or_default();
                let ordinal = host.rsplit_once('-').and_then(|(_, n)| n.parse::<u64>().ok());
                match ordinal {
                    Some(n) => Ok(n + 1),
                    None => bail!(
                        "--node-id auto needs a hostname ending in -N (a StatefulSet pod, e.g. coordinator-0); \
                         this host is {host:?}: give --node-id a number"
                    ),
                }
            }
        }
    }
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s.split_once('=').ok_or_else(|| format!("peer {s:?} is not id=host:port"))?;
    let id: u64 = id.trim().parse().map_err(|_| format!("peer {s:?}: {id:?} is not a node id"))?;
    let addr = addr.trim();
    if id == 0 || addr.is_empty() || addr.contains("://") {
        return Err(format!("peer {s:?} must be id=host:port with a positive id and no scheme"));
    }
    Ok((id, addr.to_string()))
}

#[derive(Args, Clone)]
struct PolicyArgs {
    /// Prepare a transaction once it has been open this long.
    #[arg(long, env = "LOCKSTEP_COMMIT_INTERVAL_MS", default_value_t = 200)]
    commit_interval_ms: u64,
    /// ... or once any host ran this many steps in it.
    #[arg(long, env = "LOCKSTEP_TXN_STEPS_MAX", default_value_t = 1000)]
    txn_steps_max: u64,
    /// ... or once the hosts ingested this many records in it.
    #[arg(long, env = "LOCKSTEP_TXN_RECORDS_MAX", default_value_t = 1_000_000)]
    txn_records_max: u64,
    /// Checkpoint after this many commits (0 = only when asked via Admin).
    #[arg(long, env = "LOCKSTEP_CHECKPOINT_EVERY_TXNS", default_value_t = 20)]
    checkpoint_every_txns: u64,
    /// A host silent for this long is treated as lost (and a connection
    /// that leaves this server's HTTP/2 pings unanswered as long is closed).
    #[arg(long, env = "LOCKSTEP_REPORT_DEADLINE_MS", default_value_t = 5000)]
    report_deadline_ms: u64,
    /// Replay: committed tids a host may run ahead of their verification
    /// (it holds their outputs until each one's Commit); 1 = one at a time.
    #[arg(long, env = "LOCKSTEP_REPLAY_WINDOW", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=1024))]
    replay_window: u64,
    /// Live commit pipeline: how many live tids may be begun and not yet
    /// committed at once. 1 = one at a time (the next tid starts with the
    /// previous one's Commit); above 1, hosts go on with the next tid while
    /// the coordinator records the previous one's commit, so a ledger round
    /// no longer stalls them (docs/ARCHITECTURE.md, "Commit pipeline").
    /// After a crash or a leader change the begun, uncommitted tids are
    /// continued or replayed: nothing is lost or emitted twice.
    #[arg(long, env = "LOCKSTEP_PIPELINE_DEPTH", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pipeline_depth: u64,
}

#[derive(Args)]
struct DevArgs {
    /// Number of host agents to run.
    #[arg(long, env = "LOCKSTEP_DEV_HOSTS", default_value_t = 2)]
    hosts: usize,
    #[arg(long, env = "LOCKSTEP_DATA_DIR", default_value = "./lockstep-data")]
    data_dir: PathBuf,
    #[arg(long, env = "LOCKSTEP_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Where the coordinator serves Prometheus metrics (`GET /metrics`);
    /// `off` serves none.
    #[arg(long, env = "LOCKSTEP_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: MetricsListen,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Test only: host-0's journal write of this live step fails as on a
    /// full disk.
    #[arg(long, hide = true)]
    fault_fail_journal_write_at_step: Option<u64>,
}

/// Starts the Prometheus endpoint, if one was asked for.
fn serve_metrics(addr: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        lockstep_coordinator::metrics::install(addr).map_err(anyhow::Error::msg)?;
        info!(%addr, "serving Prometheus metrics at http://{addr}/metrics");
    }
    Ok(())
}

/// The log filter without `RUST_LOG`. openraft logs a line per failed
/// peer RPC from its heartbeat and replication tasks (50 a second per
/// unreachable peer with `serve`'s 20 ms heartbeat); those are kept to
/// errors, and the peer network logs one line when a peer stops answering
/// and one when it is back (`raft/network.rs`). openraft's other warnings
/// (elections, votes) stay.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::core::heartbeat=error,openraft::replication=error,\
openraft::replication::snapshot_transmitter=warn,openraft::replication::stream_state=warn,\
openraft::replication::replication_handle=warn,openraft::engine::handler::replication_handler=error,\
h2=warn,tower=warn,hyper=warn";

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colour only on a terminal: a log file, a pipe into journald or
    // `kubectl logs` would otherwise carry escape codes around every field.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn core_config(cluster_id: String, hosts: Vec<String>, p: &PolicyArgs) -> CoreConfig {
    CoreConfig {
        cluster_id,
        hosts,
        commit_interval_ms: p.commit_interval_ms,
        txn_steps_max: p.txn_steps_max,
        txn_records_max: p.txn_records_max,
        checkpoint_every_txns: p.checkpoint_every_txns,
        report_deadline_ms: p.report_deadline_ms,
        replay_window: p.replay_window,
        pipeline_depth: p.pipeline_depth,
    }
}

/// Opens the ledger, starts the leadership supervisor (which runs the
/// driver while this node leads) and serves until `shutdown`. `quiesce`
/// resolves when the coordinator must stop deciding (the core ignores host
/// streams closing from then on); `shutdown` when it must stop serving.
/// `serve` has one signal for both; `dev` quiesces the coordinator, stops the
/// hosts (`after_quiesce`), then shuts the coordinator down, so a clean stop
/// logs no "host lost".
async fn run_coordinator(
    args: ServeArgs,
    listener: tokio::net::TcpListener,
    quiesce: impl std::future::Future<Output = ()> + Send + 'static,
    after_quiesce: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    check_hosts(&args.hosts)?;
    // The ledger counts as created once it holds a cluster id: an empty one
    // would leave it looking new on every start.
    if args.cluster_id.trim().is_empty() {
        bail!("--cluster-id is empty; give the cluster a name (the same on every coordinator and host agent)");
    }
    let node_id = args.node_id.resolve()?;
    let peers: BTreeMap<u64, String> = args.peers.iter().cloned().collect();
    if peers.len() != args.peers.len() {
        bail!("--peers lists a node id twice: {:?}", args.peers);
    }
    let mut by_addr: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, a) in &peers {
        if let Some(other) = by_addr.insert(a.as_str(), *id) {
            bail!(
                "--peers gives nodes {other} and {id} the same address {a}; every member needs its own address (one \
                 node would answer for both and send raft messages to itself)"
            );
        }
    }
    if !peers.is_empty() && !peers.contains_key(&node_id) {
        bail!("--peers {:?} does not list this node (--node-id {node_id}); list every member, this one included", args.peers);
    }
    let addr = match (&args.advertise, peers.get(&node_id)) {
        (Some(a), Some(p)) if a != p => {
            bail!("--advertise {a} differs from this node's entry in --peers ({node_id}={p}); give one address")
        }
        (Some(a), _) => a.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => listener.local_addr()?.to_string(),
    };
    let dir = &args.data_dir;
    let mut tuning = args.raft.tuning()?;
    let tls = args.tls.load().context("coordinator")?;
    tuning.peer_tls = tls.clone();
    tuning.cluster_id = args.cluster_id.clone();
    let health_listener = match &args.health_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a.as_str())
                .await
                .with_context(|| format!("binding --health-listen {a} (in use? pick another port)"))?,
        ),
        None => None,
    };
    if let Some(problem) = lockstep_host_agent::fsutil::data_dir_problem(dir, "the coordinator's") {
        bail!(problem);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating the coordinator data directory {}", dir.display()))?;
    let opened = if args.join {
        Ledger::join(dir, node_id, addr.clone(), tuning).await
    } else if peers.is_empty() {
        Ledger::open_single_with(dir, node_id, addr.clone(), tuning).await
    } else {
        Ledger::open(dir, node_id, addr.clone(), peers.clone(), tuning).await
    };
    let ledger = opened.with_context(|| format!("opening the ledger in {}", dir.display()))?;
    // Only the header fields: the state lives in the state machine, and a
    // copy held here would last as long as the process.
    let (initialised, cluster_id, epoch, last_committed, checkpoint, hosts) = ledger.with_state(|s| {
        (s.is_initialised(), s.cluster_id.clone(), s.epoch, s.last_committed, s.newest_checkpoint(), s.hosts.clone())
    });
    if initialised && cluster_id != args.cluster_id {
        ledger.shutdown().await?;
        bail!(
            "the ledger in {} belongs to cluster {:?}, but this coordinator was started for cluster {:?}; start it with \
             --cluster-id {:?} or point --data-dir at this cluster's ledger",
            dir.display(), cluster_id, args.cluster_id, cluster_id
        );
    }
    // A ledger not yet initialised has no cluster id of its own: it takes
    // this coordinator's when the group first commits.
    let cluster = if initialised { cluster_id.as_str() } else { args.cluster_id.as_str() };
    info!(
        node_id, %addr, group = ?ledger.members().voters, cluster = %cluster, new = !initialised, epoch, last_committed, checkpoint,
        "ledger opened"
    );
    let as_set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<String>>();
    if initialised && as_set(&hosts) != as_set(&args.hosts) {
        // The host set is fixed when the cluster is created; a changed flag
        // would otherwise be ignored without a word.
        warn!(
            ledger_hosts = ?hosts, flag_hosts = ?args.hosts,
            "--hosts differs from the hosts this cluster was created with; the ledger's hosts are used (the flag only \
             names the hosts of a new cluster)"
        );
    }
    let cfg = SupervisorConfig {
        core: core_config(args.cluster_id.clone(), args.hosts.clone(), &args.policy),
        coordinator_id: format!("node-{node_id}@{addr}"),
        propose_timeout: Duration::from_millis(args.propose_timeout_ms.max(1)),
    };
    let (quiesce_tx, quiesce_rx) = watch::channel(false);
    let (stage_tx, stage_rx) = watch::channel("stopping the pipeline driver");
    tokio::spawn(async move {
        quiesce.await;
        let _ = quiesce_tx.send(true);
        stop_watchdog(stage_rx).await;
    });
    let (leading, supervisor) = service::supervise(cfg, ledger.clone(), quiesce_rx);
    let stage = move |s: &'static str| {
        info!("stopping: {s}");
        let _ = stage_tx.send(s);
    };
    let supervised = async {
        let r = supervisor.await.unwrap_or_else(|e| Err(anyhow::anyhow!("the supervisor task failed: {e}")));
        after_quiesce();
        stage("pipeline driver stopped; closing the gRPC server once its open calls end");
        r
    };
    let (stop_server_tx, stop_server_rx) = tokio::sync::oneshot::channel::<()>();
    let server_shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = stop_server_rx => {}
        }
    };
    let options = service::ServeOptions {
        tls,
        host_names: args.tls_host_name.clone(),
        admin_name: args.tls_admin_name.clone(),
        health_listener,
        ping_timeout: Duration::from_millis(args.policy.report_deadline_ms),
    };
    let mut server = tokio::spawn(service::serve(listener, options, leading, ledger.clone(), server_shutdown));
    tokio::pin!(supervised);
    // A raft core that stopped on its own also ends the supervisor (its
    // leadership watch closes), so that branch checks for it too: either
    // may be polled first.
    let (supervised_result, server_result) = tokio::select! {
        biased;
        why = ledger.core_stopped() => return core_stopped_exit(&ledger, dir, why).await,
        r = &mut supervised => {
            if let Some(why) = ledger.core_failure() {
                return core_stopped_exit(&ledger, dir, why).await;
            }
            if r.is_err() {
                let _ = stop_server_tx.send(());
            }
            (r, (&mut server).await)
        }
        s = &mut server => (Ok(()), s),
    };
    stage(match &server_result {
        Ok(Ok(())) => "gRPC server closed; shutting down the ledger (raft)",
        // The error itself is this function's result, below.
        _ => "gRPC server ended with an error; shutting down the ledger (raft)",
    });
    // Bounded like the stages before it: every ledger write was fsynced
    // when it was acknowledged, so a stop that cannot wait for raft's tasks
    // loses nothing; the next start reads the log as after a crash.
    match tokio::time::timeout(lockstep_host_agent::drain::DRAIN_GRACE, ledger.shutdown()).await {
        Ok(r) => r?,
        Err(_) => warn!(
            "the ledger (raft) did not shut down within {}s; exiting without waiting for it (its log is durable; the \
             next start recovers from it)",
            lockstep_host_agent::drain::DRAIN_GRACE.as_secs()
        ),
    }
    info!("stopped");
    supervised_result?;
    server_result.context("the gRPC server task failed")?
}

/// `--hosts` must name each host once, each a valid host id
/// (`host_id_problem`): a duplicate or an empty entry (`a,,b`, a trailing
/// comma) used to be taken as is, and the pipeline then waited for a host
/// that can never connect.
fn check_hosts(hosts: &[String]) -> anyhow::Result<()> {
    if hosts.iter().all(|h| h.is_empty()) {
        bail!("--hosts lists no host; name every host agent's --host-id, comma-separated (e.g. host-0,host-1)");
    }
    let mut seen = std::collections::BTreeSet::new();
    for h in hosts {
        if let Some(problem) = lockstep_host_agent::host_id_problem(h) {
            bail!("--hosts {:?}: {problem}", hosts.join(","));
        }
        if !seen.insert(h) {
            bail!("--hosts {:?} lists {h} twice; name each host once", hosts.join(","));
        }
    }
    Ok(())
}

/// Once a stop was asked for, says every few seconds which stage it is
/// still in, so that a stop that hangs (until an orchestrator's SIGKILL)
/// names what it was waiting for in the log.
async fn stop_watchdog(mut stage: watch::Receiver<&'static str>) {
    const EVERY: Duration = Duration::from_secs(5);
    let asked = std::time::Instant::now();
    loop {
        match tokio::time::timeout(EVERY, stage.changed()).await {
            Ok(Ok(())) => {} // the next stage logged itself
            Ok(Err(_)) => return, // the coordinator is gone
            Err(_) => {
                let waited = asked.elapsed();
                warn!(waited_ms = waited.as_millis() as u64, "still stopping after {}s: {}", waited.as_secs(), *stage.borrow());
            }
        }
    }
}

/// The daemon's exit when the ledger's raft core stopped on its own.
async fn core_stopped_exit(ledger: &Ledger, dir: &std::path::Path, why: String) -> anyhow::Result<()> {
    // Nothing durable is lost: the log and snapshot are on disk, and a
    // restarted node rejoins from them.
    let _ = ledger.shutdown().await;
    bail!(
        "the ledger's raft core stopped: {why}. This node can no longer lead or follow, so the coordinator exits. \
         Fix the cause (a full disk: free space under {}), then restart it on the same data directory; it rejoins \
         the group from its durable log (under Kubernetes or compose the restart policy restarts it)",
        dir.display()
    );
}

async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen} (is another coordinator running? use --listen to pick another address)"))
}

fn main() -> anyhow::Result<()> {
    // First of all: see `lockstep_host_agent::signals::hold`.
    lockstep_host_agent::signals::hold().context("cannot hold SIGTERM and SIGINT until the coordinator listens for them")?;
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = if cli.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.worker_threads.into())
            .enable_all()
            .build()
    }
    .context("starting the async runtime")?;
    let result = runtime.block_on(run(cli.command));
    lockstep_host_agent::signals::exit_now(runtime);
    result
}

/// Resolves once `rx` holds `true` (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn run(command: Command) -> anyhow::Result<()> {
    // Before anything is opened or bound: see `signals`.
    let stop = lockstep_host_agent::signals::stop_requested().context("cannot listen for SIGTERM and SIGINT")?;
    match command {
        Command::Serve(args) => {
            let listener = bind(&args.listen).await?;
            serve_metrics(args.metrics_listen.0)?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let signal = stop.await;
                info!("{signal} received: the coordinator stops deciding, then closes its server and its ledger");
                let _ = stop_tx.send(true);
            });
            run_coordinator(args, listener, stopped(stop_rx.clone()), || {}, stopped(stop_rx)).await
        }
        Command::Dev(args) => dev::run(args, stop).await,
    }
}

mod dev {
    //! A whole local cluster in one process: the coordinator plus host
    //! agents running the reference engine (the host-agent library), each
    //! with its own data directory, talking real gRPC over loopback.

    use super::*;
    use lockstep_host_agent::{HostConfig, ReferenceConfig};
    use tokio::sync::watch;

    pub async fn run(args: DevArgs, stop: impl std::future::Future<Output = &'static str>) -> anyhow::Result<()> {
        if args.hosts == 0 {
            anyhow::bail!("--hosts must be at least 1");
        }
        let hosts: Vec<String> = (0..args.hosts).map(|i| format!("host-{i}")).collect();
        let listener = bind(&args.listen).await?;
        let addr = listener.local_addr()?;
        serve_metrics(args.metrics_listen.0)?;
        // Three stages on Ctrl-C: the coordinator stops deciding, the hosts
        // stop, then the coordinator stops serving.
        let (quiesce_tx, quiesce_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (coord_stop_tx, coord_stop_rx) = watch::channel(false);

        let serve = ServeArgs {
            listen: addr.to_string(),
            data_dir: args.data_dir.join("coordinator"),
            cluster_id: "lockstep-dev".into(),
            hosts: hosts.clone(),
            node_id: NodeIdArg::Fixed(1),
            peers: Vec::new(),
            advertise: None,
            join: false,
            propose_timeout_ms: 5000,
            metrics_listen: MetricsListen(None),
            health_listen: None,
            tls: Default::default(),
            tls_host_name: None,
            tls_admin_name: None,
            raft: RaftArgs::default(),
            policy: args.policy.clone(),
        };
        let stop_hosts_now = stop_tx.clone();
        let stop_hosts = move || {
            let _ = stop_tx.send(true);
        };
        let mut coordinator = tokio::spawn(run_coordinator(
            serve,
            listener,
            stopped(quiesce_rx),
            stop_hosts,
            stopped(coord_stop_rx),
        ));

        let mut agents = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let mut config = HostConfig::new(host.clone(), vec![format!("http://{addr}")], args.data_dir.join(host));
            if i == 0 {
                config.fault_fail_journal_write_at_step = args.fault_fail_journal_write_at_step;
            }
            let reference = ReferenceConfig {
                host_id: host.clone(),
                generator_seed: 42,
                generator_batch_max: 50,
                fault_nondeterministic_replay: false,
                push_wait: lockstep_host_agent::reference::PUSH_WAIT_DEFAULT,
            };
            agents.push(tokio::spawn(supervise_agent(config, reference, stop_rx.clone())));
        }
        info!(
            coordinator = %addr, hosts = ?hosts, data = %args.data_dir.display(),
            // Said before the ledger is open (the coordinator task opens
            // it), so it must not claim more than that the cluster starts.
            "local cluster starting; watch it with: grpcurl -plaintext {addr} lockstep.v1.Admin/GetStatus ; Ctrl-C stops"
        );

        tokio::select! {
            signal = stop => info!("{signal} received"),
            // The coordinator ended on its own: nothing will commit, so
            // stop the hosts and say why.
            r = &mut coordinator => {
                let _ = stop_hosts_now.send(true);
                for agent in agents {
                    let _ = agent.await;
                }
                r.context("the coordinator task panicked")??;
                anyhow::bail!("the coordinator stopped on its own; see the log above");
            }
        }
        info!("stopping the local cluster");
        // The hosts stop once the coordinator has quiesced (`stop_hosts`).
        let _ = quiesce_tx.send(true);
        let mut failed = false;
        for (host, agent) in hosts.iter().zip(agents) {
            match agent.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(%host, "host agent failed: {e}");
                    failed = true;
                }
                Err(e) => {
                    tracing::error!(%host, "host agent task panicked: {e}");
                    failed = true;
                }
            }
        }
        let _ = coord_stop_tx.send(true);
        coordinator.await??;
        if failed {
            anyhow::bail!("a host agent failed; see the log above");
        }
        Ok(())
    }

    /// Runs a host agent until the cluster stops, and, as an orchestrator's
    /// restart policy would, starts it again when it ends with an error
    /// before that (a disk that refused a write: the agent exits so that a
    /// fresh start reopens its files), after a pause that grows to 10 s
    /// while it keeps failing. The coordinator recovers it each time it is
    /// back.
    async fn supervise_agent(
        mut config: HostConfig,
        reference: ReferenceConfig,
        stop: watch::Receiver<bool>,
    ) -> Result<(), lockstep_host_agent::AgentError> {
        const PAUSE_MIN: Duration = Duration::from_millis(500);
        let mut pause = PAUSE_MIN;
        loop {
            let started = std::time::Instant::now();
            let result = lockstep_host_agent::run_reference(config.clone(), reference.clone(), stopped(stop.clone())).await;
            let e = match result {
                Err(e) if !*stop.borrow() => e,
                // Stopped with the cluster (or it ended cleanly).
                done => return done,
            };
            if started.elapsed() > Duration::from_secs(60) {
                pause = PAUSE_MIN;
            }
            // An injected full disk (test only) is "freed" once it failed
            // the agent: the restart must be able to recover.
            config.fault_fail_journal_write_at_step = None;
            config.fault_fail_sink_write_at_tid = None;
            tracing::error!(
                host = %config.host_id,
                "host agent failed: {e}; the dev cluster starts it again in {} ms, as an orchestrator would",
                pause.as_millis()
            );
            tokio::select! {
                _ = stopped(stop.clone()) => return Err(e),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }
}
