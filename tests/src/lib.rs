//! Harness for end-to-end tests: real `coordinator` and `host-agent`
//! processes on loopback, each with its own data directory, driven and
//! observed through the Admin gRPC API and the hosts' sink files.
//!
//! Waiting is always for an observable condition (a status field, a sink
//! line) with an overall bound; nothing sleeps to synchronise.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lockstep_proto::v1::admin_client::AdminClient;
use lockstep_proto::v1 as pb;

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A daemon child process, killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    args: Vec<String>,
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
        let bins = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let hosts_flag = (0..opts.hosts).map(host_id).collect::<Vec<_>>().join(",");
        let coordinator = Proc::spawn(
            "coordinator",
            bins.join("coordinator"),
            vec![
                "serve".into(),
                "--listen".into(),
                addr.clone(),
                "--data-dir".into(),
                dir.path().join("coordinator").display().to_string(),
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
            ],
            dir.path().join("coordinator.log"),
        );
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
                format!("http://{addr}"),
                "--data-dir".into(),
                dir.path().join(host_id(i)).display().to_string(),
                "--ingest-listen".into(),
                format!("127.0.0.1:{ingest}"),
                "--generator-seed".into(),
                opts.generator_seed.to_string(),
                "--step-interval-ms".into(),
                opts.step_interval_ms.to_string(),
            ];
            tweak(i, &mut args);
            hosts.push(Proc::spawn(&host_id(i), bins.join("host-agent"), args, dir.path().join(format!("{}.log", host_id(i)))));
        }
        Cluster { dir, opts, coordinator, hosts, addr, ingest_ports }
    }

    pub fn host_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(host_id(i))
    }

    pub async fn admin(&self) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
        Ok(AdminClient::connect(format!("http://{}", self.addr)).await?)
    }

    pub async fn status(&self) -> anyhow::Result<pb::Status> {
        status_at(&self.addr).await
    }

    /// Polls the status until `pred` holds; fails with the last status and
    /// the logs after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&pb::Status) -> bool) -> pb::Status {
        wait_for_status(&self.addr, what, timeout, pred, || self.logs()).await
    }

    pub fn logs(&self) -> String {
        let mut out = format!("---- coordinator log ----\n{}", tail(&self.coordinator.log(), 60));
        for h in &self.hosts {
            out.push_str(&format!("\n---- {} log ----\n{}", h.name, tail(&h.log(), 30)));
        }
        out
    }

    /// Every batch in host i's sink, in file order.
    pub fn sink(&self, i: usize) -> Vec<serde_json::Value> {
        let path = self.host_dir(i).join("sink").join("output.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("sink line is JSON")).collect()
    }
}

/// One Admin/GetStatus call to the coordinator at `addr` (host:port).
pub async fn status_at(addr: &str) -> anyhow::Result<pb::Status> {
    let mut admin = AdminClient::connect(format!("http://{addr}")).await?;
    Ok(admin.get_status(pb::GetStatusRequest {}).await?.into_inner())
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
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match status_at(addr).await {
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
