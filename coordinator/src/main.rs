//! `coordinator` daemon: `serve` runs one coordinator; `dev` runs a whole
//! local cluster (coordinator and host agents) on embedded defaults.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use lockstep_coordinator::core::CoreConfig;
use lockstep_coordinator::raft::Ledger;
use lockstep_coordinator::service;
use tracing::info;

#[derive(Parser)]
#[command(name = "coordinator", version, about = "Lockstep coordinator: drives fault-tolerant transactions across hosts")]
struct Cli {
    #[arg(long, env = "LOCKSTEP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

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
    #[arg(long, env = "LOCKSTEP_CLUSTER_ID", default_value = "lockstep-dev")]
    cluster_id: String,
    /// Host ids of a new cluster, comma-separated (ignored once the ledger exists).
    #[arg(long, env = "LOCKSTEP_HOSTS", value_delimiter = ',', default_value = "host-0,host-1")]
    hosts: Vec<String>,
    /// This node's raft id.
    #[arg(long, env = "LOCKSTEP_NODE_ID", default_value_t = 1)]
    node_id: u64,
    #[command(flatten)]
    policy: PolicyArgs,
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
    /// A host silent for this long is treated as lost.
    #[arg(long, env = "LOCKSTEP_REPORT_DEADLINE_MS", default_value_t = 5000)]
    report_deadline_ms: u64,
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
    #[command(flatten)]
    policy: PolicyArgs,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
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
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Opens the ledger, starts the driver and serves until `shutdown`.
/// `quiesce` resolves when the coordinator must stop deciding (the core
/// ignores host streams closing from then on); `shutdown` when it must stop
/// serving. `serve` has one signal for both; `dev` quiesces the coordinator,
/// stops the hosts (`after_quiesce`), then shuts the coordinator down, so a
/// clean stop logs no "host lost".
async fn run_coordinator(
    args: ServeArgs,
    listener: tokio::net::TcpListener,
    quiesce: impl std::future::Future<Output = ()> + Send + 'static,
    after_quiesce: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the coordinator data directory {}", args.data_dir.display()))?;
    let addr = listener.local_addr()?.to_string();
    let ledger = Ledger::open_single(&args.data_dir, args.node_id, addr.clone())
        .await
        .with_context(|| format!("opening the ledger in {}", args.data_dir.display()))?;
    let state = ledger.state().await;
    info!(
        cluster = %state.cluster_id, epoch = state.epoch, last_committed = state.last_committed,
        checkpoint = state.newest_checkpoint(), "ledger opened"
    );
    let cfg = core_config(args.cluster_id.clone(), args.hosts.clone(), &args.policy);
    let driver = service::start_driver(cfg, ledger.clone(), format!("node-{}@{addr}", args.node_id)).await?;
    let quiet = driver.clone();
    tokio::spawn(async move {
        quiesce.await;
        quiet.quiesce().await;
        after_quiesce();
    });
    let result = service::serve(listener, driver, ledger.clone(), shutdown).await;
    ledger.shutdown().await?;
    result
}

async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen} (is another coordinator running? use --listen to pick another address)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let listener = bind(&args.listen).await?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            });
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            run_coordinator(args, listener, stopped(stop_rx.clone()), || {}, stopped(stop_rx)).await
        }
        Command::Dev(args) => dev::run(args).await,
    }
}

mod dev {
    //! A whole local cluster in one process: the coordinator plus host
    //! agents running the reference engine (the host-agent library), each
    //! with its own data directory, talking real gRPC over loopback.

    use super::*;
    use lockstep_host_agent::{HostConfig, ReferenceConfig};
    use tokio::sync::watch;

    pub async fn run(args: DevArgs) -> anyhow::Result<()> {
        if args.hosts == 0 {
            anyhow::bail!("--hosts must be at least 1");
        }
        let hosts: Vec<String> = (0..args.hosts).map(|i| format!("host-{i}")).collect();
        let listener = bind(&args.listen).await?;
        let addr = listener.local_addr()?;
        // Three stages on Ctrl-C: the coordinator stops deciding, the hosts
        // stop, then the coordinator stops serving.
        let (quiesce_tx, quiesce_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (coord_stop_tx, coord_stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let serve = ServeArgs {
            listen: addr.to_string(),
            data_dir: args.data_dir.join("coordinator"),
            cluster_id: "lockstep-dev".into(),
            hosts: hosts.clone(),
            node_id: 1,
            policy: args.policy.clone(),
        };
        let stop_hosts = move || {
            let _ = stop_tx.send(true);
        };
        let coordinator = tokio::spawn(run_coordinator(
            serve,
            listener,
            stopped(quiesce_rx),
            stop_hosts,
            stopped(coord_stop_rx),
        ));

        let mut agents = Vec::new();
        for host in &hosts {
            let config = HostConfig::new(host.clone(), vec![format!("http://{addr}")], args.data_dir.join(host));
            let reference = ReferenceConfig {
                host_id: host.clone(),
                generator_seed: 42,
                generator_batch_max: 50,
                fault_nondeterministic_replay: false,
            };
            let shutdown = stopped(stop_rx.clone());
            agents.push(tokio::spawn(lockstep_host_agent::run_reference(config, reference, shutdown)));
        }
        info!(
            coordinator = %addr, hosts = ?hosts, data = %args.data_dir.display(),
            "local cluster running; try: grpcurl -plaintext {addr} lockstep.v1.Admin/GetStatus ; Ctrl-C stops"
        );

        shutdown_signal().await;
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
}
