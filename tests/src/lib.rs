//! Harness for end-to-end tests: real `coordinator` and `host-agent`
//! processes on loopback, each with its own data directory, driven and
//! observed through the Admin gRPC API and the hosts' sink files.
//!
//! Waiting is always for an observable condition (a status field, a sink
//! line) with an overall bound; nothing sleeps to synchronise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lockstep_proto::v1::admin_client::AdminClient;
use lockstep_proto::v1 as pb;

pub mod certs;
pub mod docker;

/// Builds the daemons once per test binary (a no-op when up to date) and
/// returns the directory holding them.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe path");
        // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>
        let mut dir = exe.parent().expect("target dir").to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bins", "-p", "lockstep-coordinator", "-p", "lockstep-host-agent"]);
        // From the workspace this crate was built in, not the caller's
        // directory: the bench binary run from elsewhere (a perf wrapper
        // in /tmp) had cargo fail with "could not find `Cargo.toml`".
        if let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
            cmd.current_dir(workspace);
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cmd.arg("--target-dir").arg(target);
        }
        let status = cmd.status().expect("running cargo build for the daemons");
        assert!(status.success(), "building the daemons failed");
        dir
    })
}

/// A whole-number knob from the environment (the soaks'), `default` when
/// unset; panics naming the variable when it is not a number.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// A loopback port nothing listens on now, never handed out before in
/// this test process: the kernel may give a just-released port to the next
/// bind, and two daemons of one test given the same port made one of them
/// fail to start while the other answered for both (a 3-node group that
/// was really 2 nodes, one of them sending raft RPCs to itself).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A daemon child process, killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    /// The command line `start` uses (a test may change it between runs).
    pub args: Vec<String>,
    bin: PathBuf,
    log: PathBuf,
}

impl Proc {
    /// Starts `bin args…` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, bin: PathBuf, args: Vec<String>, log: PathBuf) -> Proc {
        let mut p = Proc { name: name.into(), child: None, args, bin, log };
        p.start();
        p
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Waits (bounded) for the process to exit on its own; its exit status,
    /// or `None` if it still runs after `timeout`. The exit is awaited on a
    /// pidfd, which becomes readable when the process exits, not polled.
    pub async fn exited(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: pidfd_open(2) takes no pointers; a negative result is an
        // error, anything else a new descriptor that the OwnedFd owns.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        assert!(fd >= 0, "pidfd_open of pid {}: {}", child.id(), std::io::Error::last_os_error());
        let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the
        // same descriptor until both are dropped together.
        let pidfd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .unwrap_or_else(|e| panic!("registering a pidfd: {e}"));
        // Timing out only leaves the process running, as before.
        let _ = tokio::time::timeout(timeout, pidfd.readable()).await;
        let status = child.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().ok().and_then(|s| s.code())
    }

    /// A host agent of `cluster` with `host_id` on host `dir_of`'s data
    /// directory (name for logs: `name`), pointed at `c`'s coordinator.
    pub fn spawn_host(c: &Cluster, host_id: &str, name: &str, cluster: &str) -> Proc {
        let dir = c.dir.path().join(host_id);
        let args = vec![
            "--host-id".into(),
            host_id.into(),
            "--cluster-id".into(),
            cluster.into(),
            "--coordinator".into(),
            format!("http://{}", c.addr),
            "--data-dir".into(),
            dir.display().to_string(),
            "--ingest-listen".into(),
            "127.0.0.1:0".into(),
        ];
        Proc::spawn(name, bin_dir().join("host-agent"), args, c.dir.path().join(format!("{name}.log")))
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process freezes without
    /// closing anything, as a long GC pause or a stalled VM would.
    pub fn pause(&self, stop: bool) {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running", self.name));
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }

    /// SIGTERM without waiting (see `exited` for a bounded wait).
    pub fn sigterm(&self) {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running", self.name));
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The running child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub hosts: usize,
    pub commit_interval_ms: u64,
    pub checkpoint_every_txns: u64,
    pub report_deadline_ms: u64,
    pub generator_seed: u64,
    pub step_interval_ms: u64,
    pub cluster_id: String,
    /// The coordinator's `--pipeline-depth`.
    pub pipeline_depth: u64,
    /// More `coordinator` flags (global ones such as `--worker-threads`
    /// go before the subcommand, the rest after it; both parse).
    pub coordinator_flags: Vec<String>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            hosts: 3,
            commit_interval_ms: 50,
            checkpoint_every_txns: 5,
            report_deadline_ms: 3000,
            generator_seed: 7,
            step_interval_ms: 5,
            cluster_id: "e2e".into(),
            pipeline_depth: 1,
            coordinator_flags: Vec::new(),
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub opts: ClusterOpts,
    pub coordinator: Proc,
    pub hosts: Vec<Proc>,
    pub addr: String,
    pub ingest_ports: Vec<u16>,
    /// The files `status` and `wait_for` present when the coordinator
    /// serves mutual TLS (`None`: plaintext).
    pub client_tls: Option<certs::TlsFiles>,
}

pub fn host_id(i: usize) -> String {
    format!("host-{i}")
}

impl Cluster {
    pub fn start(opts: ClusterOpts) -> Cluster {
        Self::start_with(opts, |_, _| {})
    }

    /// `tweak(i, args)` may add flags to host i's command line.
    pub fn start_with(opts: ClusterOpts, tweak: impl Fn(usize, &mut Vec<String>)) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = format!("127.0.0.1:{}", free_port());
        let coordinator = Proc::spawn(
            "coordinator",
            bin_dir().join("coordinator"),
            coordinator_args(&opts, &addr, &dir.path().join("coordinator")),
            dir.path().join("coordinator.log"),
        );
        let (hosts, ingest_ports) = spawn_hosts(&opts, dir.path(), &format!("http://{addr}"), tweak);
        Cluster { dir, opts, coordinator, hosts, addr, ingest_ports, client_tls: None }
    }

    /// `start_with` over mutual TLS: the coordinator serves with
    /// `coordinator`'s files (after `opts.coordinator_flags`), host i dials
    /// it with `host(i)`'s (then `tweak` runs), and `status` and `wait_for`
    /// present `client`'s.
    pub fn start_tls(
        mut opts: ClusterOpts,
        coordinator: &certs::TlsFiles,
        host: impl Fn(usize) -> certs::TlsFiles,
        client: certs::TlsFiles,
        tweak: impl Fn(usize, &mut Vec<String>),
    ) -> Cluster {
        opts.coordinator_flags.extend(coordinator.flags());
        let mut c = Self::start_with(opts, |i, args| {
            host(i).apply_to_host(args);
            tweak(i, args);
        });
        c.client_tls = Some(client);
        c
    }

    /// SIGTERM to every host, then to the coordinator, each of which must
    /// exit cleanly (0); then every sink must hold each tid the coordinator
    /// had committed once, in order, with the generator's aggregates.
    pub async fn stop_cleanly_and_check_sinks(&mut self) {
        for h in &mut self.hosts {
            assert_eq!(h.terminate(), Some(0), "{} must exit cleanly on SIGTERM\n{}", h.name, h.log());
        }
        let committed = self.status().await.expect("status").last_committed_tid;
        assert_eq!(self.coordinator.terminate(), Some(0), "the coordinator must exit cleanly on SIGTERM\n{}", self.coordinator.log());
        check_sinks(self, committed);
    }

    /// SIGKILLs every host and the coordinator, then starts them again on
    /// their data: a whole-cluster crash (a power cut).
    pub fn crash_everything(&mut self) {
        for h in &mut self.hosts {
            h.kill();
        }
        self.coordinator.kill();
        self.coordinator.start();
        for h in &mut self.hosts {
            h.start();
        }
    }

    pub fn host_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(host_id(i))
    }

    pub async fn admin(&self) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
        Ok(AdminClient::connect(format!("http://{}", self.addr)).await?)
    }

    pub async fn status(&self) -> anyhow::Result<pb::Status> {
        status_at_with(&self.addr, self.client_tls.as_ref()).await
    }

    /// Polls the status until `pred` holds; fails with the last status and
    /// the logs after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&pb::Status) -> bool) -> pb::Status {
        wait_for_status_with(&self.addr, self.client_tls.as_ref(), what, timeout, pred, || self.logs()).await
    }

    pub fn logs(&self) -> String {
        let mut out = format!("---- coordinator log ----\n{}", excerpt(&self.coordinator.log(), 60));
        for h in &self.hosts {
            out.push_str(&format!("\n---- {} log ----\n{}", h.name, excerpt(&h.log(), 30)));
        }
        out
    }

    /// Every batch in host i's sink, in file order.
    pub fn sink(&self, i: usize) -> Vec<serde_json::Value> {
        read_sink(&self.host_dir(i))
    }
}

/// `coordinator serve` flags for one coordinator listening on `addr`.
fn coordinator_args(opts: &ClusterOpts, addr: &str, data_dir: &Path) -> Vec<String> {
    let hosts_flag = (0..opts.hosts).map(host_id).collect::<Vec<_>>().join(",");
    vec![
        "serve".into(),
        "--listen".into(),
        addr.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--cluster-id".into(),
        opts.cluster_id.clone(),
        "--hosts".into(),
        hosts_flag,
        "--commit-interval-ms".into(),
        opts.commit_interval_ms.to_string(),
        "--checkpoint-every-txns".into(),
        opts.checkpoint_every_txns.to_string(),
        "--report-deadline-ms".into(),
        opts.report_deadline_ms.to_string(),
        "--pipeline-depth".into(),
        opts.pipeline_depth.to_string(),
    ]
    .into_iter()
    .chain(opts.coordinator_flags.iter().cloned())
    .collect()
}

/// Starts `opts.hosts` host agents with data under `dir`, pointed at
/// `coordinators` (the `--coordinator` value). Returns them and their
/// ingest ports.
fn spawn_hosts(
    opts: &ClusterOpts,
    dir: &Path,
    coordinators: &str,
    tweak: impl Fn(usize, &mut Vec<String>),
) -> (Vec<Proc>, Vec<u16>) {
    let mut hosts = Vec::new();
    let mut ingest_ports = Vec::new();
    for i in 0..opts.hosts {
        let ingest = free_port();
        ingest_ports.push(ingest);
        let mut args = vec![
            "--host-id".into(),
            host_id(i),
            "--cluster-id".into(),
            opts.cluster_id.clone(),
            "--coordinator".into(),
            coordinators.into(),
            "--data-dir".into(),
            dir.join(host_id(i)).display().to_string(),
            "--ingest-listen".into(),
            format!("127.0.0.1:{ingest}"),
            "--generator-seed".into(),
            opts.generator_seed.to_string(),
            "--step-interval-ms".into(),
            opts.step_interval_ms.to_string(),
        ];
        tweak(i, &mut args);
        hosts.push(Proc::spawn(&host_id(i), bin_dir().join("host-agent"), args, dir.join(format!("{}.log", host_id(i)))));
    }
    (hosts, ingest_ports)
}

/// When a test fails (its thread is panicking), copies the process logs in
/// `dir` to a directory that outlives the test and says where: the output
/// of a failed test shows only each log's tail.
fn keep_logs_if_failing(dir: &Path) {
    if !std::thread::panicking() {
        return;
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().trim_start_matches('.').to_string()).unwrap_or_default();
    let keep = std::env::temp_dir().join(format!("lockstep-failed-{name}"));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    // None when the test kept the whole directory itself (the soak).
    let logs: Vec<_> = entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "log")).collect();
    if logs.is_empty() || std::fs::create_dir_all(&keep).is_err() {
        return;
    }
    for e in logs {
        let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
    }
    eprintln!("the failed test's process logs are kept in {}", keep.display());
}

impl Drop for Cluster {
    fn drop(&mut self) {
        keep_logs_if_failing(self.dir.path());
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        keep_logs_if_failing(self.dir.path());
    }
}

/// A replicated coordinator group (`serve --peers`, node ids 1..=n on
/// loopback) and host agents that know every coordinator address.
pub struct Group {
    pub dir: tempfile::TempDir,
    pub opts: ClusterOpts,
    /// `nodes[i]` is coordinator node id `i + 1`, listening on `addrs[i]`.
    pub nodes: Vec<Proc>,
    pub addrs: Vec<String>,
    pub hosts: Vec<Proc>,
}

impl Group {
    pub fn start(n: usize, opts: ClusterOpts) -> Group {
        Self::start_with(n, opts, |_, _| {})
    }

    /// `tweak(i, args)` may add flags to host i's command line.
    pub fn start_with(n: usize, opts: ClusterOpts, tweak: impl Fn(usize, &mut Vec<String>)) -> Group {
        Self::start_nodes_with(n, opts, |_, _| {}, tweak)
    }

    /// `node(i, args)` may add flags to coordinator node i+1's command
    /// line, `host(i, args)` to host i's.
    pub fn start_nodes_with(
        n: usize,
        opts: ClusterOpts,
        node: impl Fn(usize, &mut Vec<String>),
        tweak: impl Fn(usize, &mut Vec<String>),
    ) -> Group {
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let name = format!("coordinator-{}", i + 1);
                let mut args = coordinator_args(&opts, addr, &dir.path().join(&name));
                args.extend(["--node-id".into(), (i + 1).to_string(), "--peers".into(), peers.clone()]);
                node(i, &mut args);
                Proc::spawn(&name, bin_dir().join("coordinator"), args, dir.path().join(format!("{name}.log")))
            })
            .collect();
        let urls = addrs.iter().map(|a| format!("http://{a}")).collect::<Vec<_>>().join(",");
        let (hosts, _) = spawn_hosts(&opts, dir.path(), &urls, tweak);
        Group { dir, opts, nodes, addrs, hosts }
    }

    /// Polls every running node until one answers as the leader driving the
    /// pipeline (not stale) with a status satisfying `pred`; returns its
    /// index and status. Panics with the logs after `timeout`.
    pub async fn wait_leader(&self, what: &str, timeout: Duration, pred: impl Fn(&pb::Status) -> bool) -> (usize, pb::Status) {
        wait_leader_among(&self.nodes, &self.addrs, None, what, timeout, pred, || self.logs()).await
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.nodes.iter().chain(&self.hosts) {
            out.push_str(&format!("\n---- {} log ----\n{}", p.name, excerpt(&p.log(), 40)));
        }
        out
    }

    /// Every batch in host i's sink, in file order.
    pub fn sink(&self, i: usize) -> Vec<serde_json::Value> {
        read_sink(&self.dir.path().join(host_id(i)))
    }
}

/// Polls every running coordinator of `nodes` (node i serving at
/// `addrs[i]`) until one answers as the leader driving the pipeline (not
/// stale) with a status satisfying `pred`; returns its index and status.
/// Asks over mutual TLS with `tls`. Panics with `logs()` after `timeout`.
pub async fn wait_leader_among(
    nodes: &[Proc],
    addrs: &[String],
    tls: Option<&certs::TlsFiles>,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&pb::Status) -> bool,
    logs: impl Fn() -> String,
) -> (usize, pb::Status) {
    wait_leader_at(addrs, tls, what, timeout, |i| nodes[i].is_running(), pred, logs).await
}

/// `wait_leader_among` for coordinators wherever they run: asks each
/// `addrs[i]` for which `ask(i)` holds.
pub async fn wait_leader_at(
    addrs: &[String],
    tls: Option<&certs::TlsFiles>,
    what: &str,
    timeout: Duration,
    ask: impl Fn(usize) -> bool,
    pred: impl Fn(&pb::Status) -> bool,
    logs: impl Fn() -> String,
) -> (usize, pb::Status) {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    loop {
        last.clear();
        for (i, addr) in addrs.iter().enumerate().filter(|(i, _)| ask(*i)) {
            if let Ok(s) = status_at_with(addr, tls).await {
                if s.is_leader && !s.stale && pred(&s) {
                    return (i, s);
                }
                last.push((i + 1, s.is_leader, s.pipeline_state.clone(), s.epoch, s.last_committed_tid));
            }
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; last (node, leader, state, epoch, committed): {last:?}\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The batches (one JSON object per committed tid) in the sink of the host
/// whose data directory is `host_dir`; none if it has no sink yet. Only
/// whole lines count: a running host may be appending the last one as this
/// reads it (a line is written whole only once it ends in a newline; a
/// host that crashed mid-line cuts that tail off when it restarts).
pub fn read_sink(host_dir: &Path) -> Vec<serde_json::Value> {
    let path = host_dir.join("sink").join("output.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("sink line is not JSON ({e}): {l}")))
        .collect()
}

/// One Admin/GetStatus call to the coordinator at `addr` (host:port).
/// Bounded in time: a paused (SIGSTOPped) process still accepts TCP
/// connections in the kernel but never answers.
pub async fn status_at(addr: &str) -> anyhow::Result<pb::Status> {
    status_at_with(addr, None).await
}

/// `status_at` over mutual TLS with `tls` (`None`: plaintext).
pub async fn status_at_with(addr: &str, tls: Option<&certs::TlsFiles>) -> anyhow::Result<pb::Status> {
    Ok(admin_at(addr, tls).await?.get_status(pb::GetStatusRequest {}).await?.into_inner())
}

/// An Admin client of the coordinator at `addr`, over mutual TLS with
/// `tls`; its connect and each call bounded in time (a paused process
/// still accepts TCP connections in the kernel but never answers).
async fn admin_at(addr: &str, tls: Option<&certs::TlsFiles>) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    if let Some(f) = tls {
        endpoint = endpoint.tls_config(f.client())?;
    }
    Ok(AdminClient::new(endpoint.connect().await?))
}

/// One Admin/ListNodes call to the coordinator at `addr` (host:port),
/// bounded in time like `status_at`.
pub async fn nodes_at(addr: &str) -> anyhow::Result<Vec<pb::Node>> {
    Ok(admin_at(addr, None).await?.list_nodes(pb::ListNodesRequest {}).await?.into_inner().nodes)
}

/// Polls `addr`'s ListNodes until `pred` holds for its answer (bounded by
/// `timeout`); on timeout panics with the last answer and `logs()`.
pub async fn wait_for_nodes(
    addr: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[pb::Node]) -> bool,
    logs: impl Fn() -> String,
) -> Vec<pb::Node> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match nodes_at(addr).await {
            Ok(nodes) if pred(&nodes) => return nodes,
            Ok(nodes) => last = Some(nodes),
            // A call that failed (the machine busy) is asked again.
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ListNodes at {addr} never showed {what} within {timeout:?}; its last answer: {last:#?}{}", logs());
}

/// The metric names the alerting rules use (`deploy/prometheus/lockstep.rules.yml`),
/// from each rule's expression parsed as PromQL; panics, naming the rule,
/// on an expression that does not parse. Each `expr:` must fit on its line
/// (checked: one per `- alert:`).
pub fn alert_rule_metrics() -> BTreeSet<String> {
    let path = docker::repo_root().join("deploy/prometheus/lockstep.rules.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let alerts = text.lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    let exprs: Vec<&str> = text.lines().filter_map(|l| l.trim_start().strip_prefix("expr:")).map(str::trim).collect();
    assert_eq!(exprs.len(), alerts, "{}: one single-line expr per alert", path.display());
    assert!(alerts > 0, "{}: no alerts", path.display());
    let mut names = BTreeSet::new();
    for e in exprs {
        let parsed = promql_parser::parser::parse(e).unwrap_or_else(|why| panic!("{}: `{e}` is not PromQL: {why}", path.display()));
        metric_names(&parsed, &mut names);
    }
    names
}

fn metric_names(e: &promql_parser::parser::Expr, out: &mut BTreeSet<String>) {
    use promql_parser::parser::Expr as E;
    match e {
        E::VectorSelector(v) => out.extend(v.name.clone()),
        E::MatrixSelector(m) => out.extend(m.vs.name.clone()),
        E::Aggregate(a) => {
            metric_names(&a.expr, out);
            if let Some(p) = &a.param {
                metric_names(p, out);
            }
        }
        E::Unary(u) => metric_names(&u.expr, out),
        E::Binary(b) => {
            metric_names(&b.lhs, out);
            metric_names(&b.rhs, out);
        }
        E::Paren(p) => metric_names(&p.expr, out),
        E::Subquery(s) => metric_names(&s.expr, out),
        E::Call(c) => c.args.args.iter().for_each(|a| metric_names(a, out)),
        E::NumberLiteral(_) | E::StringLiteral(_) | E::Extension(_) => {}
    }
}

/// The metric names in a scrape (`scrape_metrics`), labels dropped.
pub fn series_names(scrape: &BTreeMap<String, f64>) -> BTreeSet<String> {
    scrape.keys().map(|k| k.split('{').next().unwrap_or(k).to_string()).collect()
}

/// One plain-HTTP GET of `addr`'s `/metrics` (a daemon's
/// `--metrics-listen`), parsed: `name{labels}` -> value for every sample
/// line of the Prometheus text format. Blocking; bounded in time.
pub fn scrape_metrics(addr: &str) -> BTreeMap<String, f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to the metrics endpoint {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

/// Polls `addr`'s GetStatus until `pred` holds (bounded by `timeout`);
/// on timeout panics with the last status seen and `logs()`.
pub async fn wait_for_status(
    addr: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&pb::Status) -> bool,
    logs: impl Fn() -> String,
) -> pb::Status {
    wait_for_status_with(addr, None, what, timeout, pred, logs).await
}

/// `wait_for_status` over mutual TLS with `tls` (`None`: plaintext).
pub async fn wait_for_status_with(
    addr: &str,
    tls: Option<&certs::TlsFiles>,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&pb::Status) -> bool,
    logs: impl Fn() -> String,
) -> pb::Status {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match status_at_with(addr, tls).await {
            Ok(s) if pred(&s) => return s,
            Ok(s) => last = Some(s),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; last status: {last:#?}\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `lines` lines of a process log, after every panic message in
/// it (a panic early in a long log would otherwise scroll out of a failed
/// test's output).
pub fn excerpt(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    let mut out = String::new();
    for (i, l) in all.iter().enumerate() {
        if l.contains("panicked at") {
            out.push_str("(panic) ");
            out.push_str(&all[i..(i + 3).min(all.len())].join("\n"));
            out.push('\n');
        }
    }
    out + &tail(log, lines)
}

pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Checks one host's sink: tids strictly increase (so each committed tid
/// appears exactly once). Returns the tids.
pub fn sink_tids(batches: &[serde_json::Value]) -> Vec<u64> {
    let tids: Vec<u64> = batches.iter().map(|b| b["tid"].as_u64().expect("tid")).collect();
    for w in tids.windows(2) {
        assert!(w[0] < w[1], "sink tids must strictly increase (exactly once): {tids:?}");
    }
    tids
}

/// Final (count, sum) per key from a sink: the last row seen for each key.
pub fn sink_final_state(batches: &[serde_json::Value]) -> BTreeMap<String, (u64, i64)> {
    let mut state = BTreeMap::new();
    for b in batches {
        for row in b["rows"].as_array().into_iter().flatten() {
            let key = row["key"].as_str().expect("row key").to_string();
            let count = row["count"].as_u64().expect("row count");
            let sum = row["sum"].as_i64().expect("row sum");
            state.insert(key, (count, sum));
        }
    }
    state
}

/// Recomputes one host's final keyed aggregation from the generator seed
/// alone, for the records the last committed batch says were consumed.
pub fn independent_state(seed: u64, host: &str, offset: u64) -> BTreeMap<String, (u64, i64)> {
    let mut state: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for i in 0..offset {
        let (key, value) = lockstep_host_agent::reference::generate(seed, host, i);
        let e = state.entry(key).or_default();
        e.0 += 1;
        e.1 += value;
    }
    state
}

pub fn check_sinks(c: &Cluster, committed: u64) {
    check_sinks_of(&c.opts, |i| c.sink(i), committed);
}

/// The epoch never decreases along host i's sink: no commit of a deposed
/// leader lands after one of its successor's.
pub fn assert_epochs_in_order(i: usize, batches: &[serde_json::Value]) {
    let epochs: Vec<u64> = batches.iter().map(|b| b["epoch"].as_u64().expect("epoch")).collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "host {i}: sink epochs went backwards: {epochs:?}");
}

/// `check_sinks` for any set of hosts started with `opts`, whose sinks
/// `sink(i)` reads: every committed tid exactly once and in order, epochs
/// never going backwards along a sink (no commit of a deposed leader after
/// one of its successor's), and the final aggregates those an independent
/// computation from the generator's seed gives. Returns how many tids each
/// sink holds.
pub fn check_sinks_of(opts: &ClusterOpts, sink: impl Fn(usize) -> Vec<serde_json::Value>, committed: u64) -> Vec<u64> {
    let mut lengths = Vec::with_capacity(opts.hosts);
    for i in 0..opts.hosts {
        let batches = sink(i);
        let tids = sink_tids(&batches);
        assert!(tids.len() as u64 >= committed.min(1), "host {i} emitted nothing");
        // Every committed tid exactly once: the sink holds 1..=N with no gap.
        let expect: Vec<u64> = (1..=tids.len() as u64).collect();
        assert_eq!(tids, expect, "host {i}: sink must hold every committed tid once, in order");
        assert_epochs_in_order(i, &batches);
        let offset = batches.last().and_then(|b| b["generator_offset"].as_u64()).unwrap_or(0);
        let got = sink_final_state(&batches);
        let want = independent_state(opts.generator_seed, &host_id(i), offset);
        assert_eq!(got, want, "host {i}: final aggregates differ from the independent computation");
        lengths.push(tids.len() as u64);
    }
    lengths
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exited` returns the status of a process that exits, and `None`
    /// (leaving it running) for one that outlives the timeout.
    #[tokio::test]
    async fn exited_awaits_the_exit_and_times_out_on_a_running_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut quick = Proc::spawn("sh", "/bin/sh".into(), vec!["-c".into(), "exit 3".into()], dir.path().join("quick.log"));
        let status = quick.exited(Duration::from_secs(30)).await.expect("sh -c 'exit 3' exits");
        assert_eq!(status.code(), Some(3));
        let mut slow = Proc::spawn("sleep", "/bin/sleep".into(), vec!["600".into()], dir.path().join("slow.log"));
        assert!(slow.exited(Duration::from_millis(50)).await.is_none(), "sleep 600 is still running");
        assert!(slow.child.is_some(), "a process that timed out is still ours to kill");
        slow.kill();
    }
}

#[cfg(test)]
mod rules_tests {
    /// The alerting rules parse as PromQL and name the metrics they are
    /// about (whether the daemons export them is checked where they run:
    /// tests/replicated.rs, tests/tls.rs).
    #[test]
    fn the_alerting_rules_parse_and_name_lockstep_metrics() {
        let names = super::alert_rule_metrics();
        assert!(names.iter().all(|n| n.starts_with("lockstep_")), "{names:?}");
        for expected in ["lockstep_pipeline_state", "lockstep_leader", "lockstep_raft_member_last_answer_age_seconds", "lockstep_tls_not_after_seconds"] {
            assert!(names.contains(expected), "no rule on {expected}: {names:?}");
        }
    }
}
