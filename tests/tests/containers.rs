//! Cluster tests in real containers: the `lockstep:dev` image (built from
//! local files by `deploy/image/build.sh`, from the same debug binaries the
//! other end-to-end tests use), one coordinator (or a raft group of three,
//! `coordinator-1..3`) and three host agents as containers on a Docker
//! network this test creates, configured the way `deploy/compose` does it
//! (LOCKSTEP_* environment variables, the hosts reach the coordinators by
//! their DNS names).
//!
//! Only the coordinator's gRPC port is published, on 127.0.0.1; the test
//! polls `Admin/GetStatus` through it with bounded waits (no sleeps as
//! synchronisation). Each host's data directory is a bind-mounted temp dir,
//! so its sink is read directly. Every container and the network are removed
//! when the test ends, also when it panics ([`DockerCluster`]'s Drop).
//!
//! Without a usable docker CLI and daemon the tests print a SKIPPED line and
//! pass. The Kubernetes manifests' offline validation lives here too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lockstep_proto::v1 as pb;
use lockstep_tests::certs::{TestCa, TlsFiles};
use lockstep_tests::{bin_dir, host_id, scrape_metrics, sink_final_state, sink_tids, status_at_with, tail, wait_for_status_with};

const LONG: Duration = Duration::from_secs(60);
const HOSTS: usize = 3;
const SEED: u64 = 7;
const CLUSTER: &str = "containers";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Runs `docker args…`; stdout (trimmed) or an error naming the command.
fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why containers cannot run here, if they cannot.
fn docker_unavailable() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| docker(&["version", "--format", "{{.Server.Version}}"]).err()).clone()
}

/// The image, built once per test binary by deploy/image/build.sh from the
/// debug binaries `bin_dir()` builds (the script reuses an image that
/// already holds exactly these binaries).
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tag = std::env::var("LOCKSTEP_IMAGE").unwrap_or_else(|_| "lockstep:dev".into());
        let bins = bin_dir();
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(repo_root().join("deploy/image/build.sh"))
            .arg(if bins.ends_with("release") { "release" } else { "debug" })
            .arg("--bin-dir")
            .arg(bins)
            .arg("--tag")
            .arg(&tag)
            .output()
            .expect("running deploy/image/build.sh");
        assert!(
            out.status.success(),
            "deploy/image/build.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{} ({} ms)", String::from_utf8_lossy(&out.stdout).trim(), started.elapsed().as_millis());
        tag
    })
}

/// Returns false (after printing why) when the test must be skipped.
fn containers_can_run(test: &str) -> bool {
    match docker_unavailable() {
        Some(why) => {
            println!("SKIPPED: {test}: no usable docker CLI/daemon here ({why})");
            false
        }
        None => true,
    }
}

fn running(s: &pb::Status) -> bool {
    s.pipeline_state == "Running"
}

/// One coordinator and `HOSTS` host agents as containers on a network of
/// their own. Drop removes the containers (with their anonymous volumes) and
/// the network; the temp dir with the data dirs goes after that.
struct DockerCluster {
    prefix: String,
    network: String,
    image: String,
    dir: tempfile::TempDir,
    /// The coordinators' roles (container name suffix and DNS alias):
    /// `coordinator`, or `coordinator-1..N` for a replicated group.
    coordinators: Vec<String>,
    /// Their gRPC ports published on 127.0.0.1, in the same order.
    ports: Vec<u16>,
    port: u16,
    report_deadline_ms: u64,
    /// Every container this cluster created, for cleanup.
    containers: Vec<String>,
    /// With mutual TLS: the files every daemon gets (mounted read-only at
    /// /etc/lockstep/tls) and the test's client presents.
    tls: Option<TlsFiles>,
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(self.containers.iter().map(String::as_str));
            if let Err(e) = docker(&args) {
                eprintln!("cleanup: {e}");
            }
        }
        if let Err(e) = docker(&["network", "rm", &self.network]) {
            eprintln!("cleanup: {e}");
        }
    }
}

impl DockerCluster {
    async fn start(report_deadline_ms: u64) -> DockerCluster {
        Self::start_group(1, report_deadline_ms).await
    }

    /// `n` coordinators: one plain `coordinator serve`, or a raft group
    /// `coordinator-1..n` (`LOCKSTEP_PEERS`, node ids 1..n), as
    /// deploy/compose runs it; the hosts list every coordinator.
    async fn start_group(n: usize, report_deadline_ms: u64) -> DockerCluster {
        Self::start_group_with(n, report_deadline_ms, false).await
    }

    /// `start_group`, with mutual TLS on every connection when `tls`: one
    /// certificate for every daemon, naming each coordinator's DNS alias
    /// (peers and hosts dial those) and 127.0.0.1 (the test dials the
    /// published ports), as deploy/README.md's "Mutual TLS" sets it up.
    async fn start_group_with(n: usize, report_deadline_ms: u64, tls: bool) -> DockerCluster {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let prefix = format!("lockstep-ct-{}-{}-{:08x}", std::process::id(), N.fetch_add(1, Ordering::SeqCst), nanos);
        let network = format!("{prefix}-net");
        let dir = tempfile::tempdir().expect("tempdir");
        let coordinators: Vec<String> =
            if n == 1 { vec!["coordinator".into()] } else { (1..=n).map(|i| format!("coordinator-{i}")).collect() };
        let mut c = DockerCluster {
            prefix: prefix.clone(),
            network: network.clone(),
            image: image().to_string(),
            dir,
            coordinators: coordinators.clone(),
            ports: Vec::new(),
            port: 0,
            report_deadline_ms,
            containers: Vec::new(),
            tls: None,
        };
        if tls {
            let certs = c.dir.path().join("tls");
            std::fs::create_dir_all(&certs).expect("tls dir");
            let ca = TestCa::new(&certs, "cluster");
            let names: Vec<&str> = coordinators.iter().map(String::as_str).collect();
            c.tls = Some(ca.issue_naming(&certs, "node", &names));
        }
        docker(&["network", "create", "--label", &format!("lockstep.test={prefix}"), &network]).expect("creating the test network");

        let hosts = (0..HOSTS).map(host_id).collect::<Vec<_>>().join(",");
        let deadline = report_deadline_ms.to_string();
        let peers = (1..=n).map(|i| format!("{i}={}:50051", coordinators[i - 1])).collect::<Vec<_>>().join(",");
        for (i, role) in coordinators.iter().enumerate() {
            let node_id = (i + 1).to_string();
            let mut env = vec![
                ("LOCKSTEP_CLUSTER_ID", CLUSTER),
                ("LOCKSTEP_HOSTS", hosts.as_str()),
                ("LOCKSTEP_COMMIT_INTERVAL_MS", "50"),
                ("LOCKSTEP_CHECKPOINT_EVERY_TXNS", "5"),
                ("LOCKSTEP_REPORT_DEADLINE_MS", deadline.as_str()),
                // As deploy/compose and the Kubernetes manifests serve them.
                ("LOCKSTEP_METRICS_LISTEN", "0.0.0.0:9464"),
            ];
            if n > 1 {
                env.extend([("LOCKSTEP_NODE_ID", node_id.as_str()), ("LOCKSTEP_PEERS", peers.as_str())]);
            }
            // Published on loopback only, on a free port the engine picks.
            c.run(role, &["--network-alias", role, "--publish", "127.0.0.1::50051"], &env, &["coordinator", "serve"]);
            let port = c.published_port(role);
            c.ports.push(port);
        }
        c.port = c.ports[0];
        // Bare host:port with TLS: dialed as https://.
        let scheme = if c.tls.is_some() { "" } else { "http://" };
        let coordinator_urls = coordinators.iter().map(|r| format!("{scheme}{r}:50051")).collect::<Vec<_>>().join(",");
        for i in 0..HOSTS {
            let id = host_id(i);
            let seed = SEED.to_string();
            c.run(
                &id,
                &["--hostname", &id],
                &[
                    ("LOCKSTEP_HOST_ID", &id),
                    ("LOCKSTEP_CLUSTER_ID", CLUSTER),
                    // Resolved by Docker's DNS through the image's NSS setup.
                    ("LOCKSTEP_COORDINATOR", &coordinator_urls),
                    ("LOCKSTEP_GENERATOR_SEED", &seed),
                    ("LOCKSTEP_STEP_INTERVAL_MS", "5"),
                    ("LOCKSTEP_METRICS_LISTEN", "0.0.0.0:9465"),
                ],
                &["host-agent"],
            );
        }
        c
    }

    /// The 127.0.0.1 port Docker publishes `role`'s gRPC port on.
    fn published_port(&self, role: &str) -> u16 {
        let published = docker(&["port", &self.name(role), "50051/tcp"]).expect("published port");
        published
            .lines()
            .find_map(|l| l.strip_prefix("127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no 127.0.0.1 port in `docker port`: {published:?}"))
    }

    fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// `docker run -d` of one daemon with its data dir bind-mounted from the
    /// temp dir, as the calling user (so the temp dir can be removed).
    fn run(&mut self, role: &str, extra: &[&str], env: &[(&str, &str)], cmd: &[&str]) {
        let data = self.dir.path().join(role);
        std::fs::create_dir_all(&data).expect("data dir");
        let name = self.name(role);
        let user = unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) };
        let label = format!("lockstep.test={}", self.prefix);
        let mount = format!("{}:/data", data.display());
        let mut args: Vec<String> = ["run", "--detach", "--name", &name, "--label", &label, "--network", &self.network, "--user", &user]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--volume".to_string(), mount]);
        args.extend(extra.iter().map(|s| s.to_string()));
        for (k, v) in env {
            args.extend(["--env".to_string(), format!("{k}={v}")]);
        }
        if let Some(f) = &self.tls {
            let dir = f.cert.parent().expect("cert dir");
            args.extend(["--volume".to_string(), format!("{}:/etc/lockstep/tls:ro", dir.display())]);
            let inside = |p: &Path| format!("/etc/lockstep/tls/{}", p.file_name().expect("file name").to_string_lossy());
            for (k, p) in [("LOCKSTEP_TLS_CERT", &f.cert), ("LOCKSTEP_TLS_KEY", &f.key), ("LOCKSTEP_TLS_CA", &f.ca)] {
                args.extend(["--env".to_string(), format!("{k}={}", inside(p))]);
            }
        }
        args.push(self.image.clone());
        args.extend(cmd.iter().map(|s| s.to_string()));
        // Registered before it runs: a half-created container is removed too.
        self.containers.push(name.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args).unwrap_or_else(|e| panic!("starting {role}: {e}"));
    }

    async fn status(&self) -> anyhow::Result<pb::Status> {
        status_at_with(&format!("127.0.0.1:{}", self.port), self.tls.as_ref()).await
    }

    /// Polls GetStatus until `pred` holds; panics with the last status and
    /// the containers' logs after `timeout`.
    async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&pb::Status) -> bool) -> pb::Status {
        wait_for_status_with(&format!("127.0.0.1:{}", self.port), self.tls.as_ref(), what, timeout, pred, || self.logs()).await
    }

    fn log(&self, role: &str) -> String {
        let out = Command::new("docker").args(["logs", &self.name(role)]).output();
        out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for role in &self.coordinators {
            out.push_str(&format!("---- {role} log ----\n{}\n", tail(&self.log(role), 200)));
        }
        for i in 0..HOSTS {
            out.push_str(&format!("\n---- {} log ----\n{}", host_id(i), tail(&self.log(&host_id(i)), 30)));
        }
        out
    }

    fn docker(&self, args: &[&str]) {
        docker(args).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// SIGTERM to every daemon, waits for each to exit, and asserts each
    /// exited cleanly (status 0): graceful shutdown as PID 1. Coordinators
    /// go first, with their hosts still connected (as a rolling update or
    /// a node drain does it), so that their stop must end the host streams
    /// itself; the hosts, left without a coordinator, go last.
    fn stop_all(&self) {
        let roles: Vec<String> = self.coordinators.iter().cloned().chain((0..HOSTS).map(host_id)).collect();
        for role in &roles {
            let asked = Instant::now();
            self.docker(&["stop", "--time", "30", &self.name(role)]);
            let took = asked.elapsed();
            let code = docker(&["inspect", "--format", "{{.State.ExitCode}}", &self.name(role)]).expect("inspect");
            // The code and the time tell a refused shutdown (an error exit,
            // fast) from a hung one (SIGKILL after the 30 s grace: 137).
            assert_eq!(code, "0", "{role} must exit cleanly on SIGTERM; it exited with {code} after {took:?}\n{}", self.logs());
        }
    }

    /// Polls every coordinator not in `skip` until one answers as the
    /// leader driving the pipeline with a status satisfying `pred`.
    async fn wait_leader(&self, what: &str, skip: &[usize], pred: impl Fn(&pb::Status) -> bool) -> (usize, pb::Status) {
        let deadline = Instant::now() + LONG;
        let mut last = Vec::new();
        loop {
            last.clear();
            for (i, port) in self.ports.iter().enumerate().filter(|(i, _)| !skip.contains(i)) {
                if let Ok(s) = status_at_with(&format!("127.0.0.1:{port}"), self.tls.as_ref()).await {
                    if s.is_leader && !s.stale && pred(&s) {
                        return (i, s);
                    }
                    last.push((i + 1, s.is_leader, s.pipeline_state.clone(), s.epoch, s.last_committed_tid));
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; (node, leader, state, epoch, committed): {last:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn container_ip(&self, role: &str) -> String {
        docker(&["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &self.name(role)]).unwrap_or_default()
    }

    /// Every batch in host i's sink (read once the hosts have stopped).
    fn sink(&self, i: usize) -> Vec<serde_json::Value> {
        let path = self.dir.path().join(host_id(i)).join("sink").join("output.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("sink line is JSON")).collect()
    }

    /// After `stop_all`: every host's sink holds tids 1..=N exactly once, in
    /// order, N at least `committed`, and its final aggregates equal an
    /// independent computation from the generator's seed.
    fn check_sinks(&self, committed: u64) {
        for i in 0..HOSTS {
            let batches = self.sink(i);
            let tids = sink_tids(&batches);
            let expect: Vec<u64> = (1..=tids.len() as u64).collect();
            assert_eq!(tids, expect, "host {i}: sink must hold every committed tid once, in order");
            assert!(tids.len() as u64 >= committed, "host {i}: sink ends at {} but {committed} were committed", tids.len());
            let offset = batches.last().and_then(|b| b["generator_offset"].as_u64()).unwrap_or(0);
            let mut want: BTreeMap<String, (u64, i64)> = BTreeMap::new();
            for n in 0..offset {
                let (key, value) = lockstep_host_agent::reference::generate(SEED, &host_id(i), n);
                let e = want.entry(key).or_default();
                e.0 += 1;
                e.1 += value;
            }
            assert_eq!(sink_final_state(&batches), want, "host {i}: final aggregates differ from the generator");
        }
    }
}

/// (a) commits; (b) `docker kill` of a host container and `docker start` of
/// the same container: the pipeline recovers (new epoch, replay), returns to
/// Running, commits past where it was, and every sink is exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_commit_and_recover_from_a_killed_host() {
    if !containers_can_run("containers_commit_and_recover_from_a_killed_host") {
        return;
    }
    let started = Instant::now();
    let c = DockerCluster::start(3000).await;
    let s = c.wait_for("3 commits in containers", LONG, |s| running(s) && s.last_committed_tid >= 3).await;
    assert_eq!(s.hosts.len(), HOSTS);
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");
    assert_eq!(s.cluster_id, CLUSTER);
    // The image serves both daemons' metrics, reached on the test network.
    let (coordinator, host) = (format!("{}:9464", c.container_ip("coordinator")), format!("{}:9465", c.container_ip(&host_id(0))));
    let (m, h) = tokio::task::spawn_blocking(move || (scrape_metrics(&coordinator), scrape_metrics(&host))).await.expect("scrape");
    assert_eq!(m.get("lockstep_leader"), Some(&1.0), "{m:#?}");
    assert_eq!(m.get(r#"lockstep_pipeline_state{state="Running"}"#), Some(&1.0), "{m:#?}");
    assert_eq!(m.get("lockstep_hosts_connected"), Some(&(HOSTS as f64)), "{m:#?}");
    assert_eq!(h.get(r#"lockstep_agent_session_up{host="host-0"}"#), Some(&1.0), "{h:#?}");

    let victim = host_id(1);
    c.docker(&["kill", "--signal", "KILL", &c.name(&victim)]);
    let lost = c
        .wait_for("the coordinator to notice the killed host", LONG, |s| {
            s.hosts.iter().any(|h| h.host_id == victim && !h.connected)
        })
        .await;
    let (committed, epoch) = (lost.last_committed_tid, lost.epoch);
    c.docker(&["start", &c.name(&victim)]);
    let s = c
        .wait_for(&format!("Running again, in a new epoch, past tid {committed}"), LONG, |s| {
            s.pipeline_state == "Failed" || (running(s) && s.epoch > epoch && s.last_committed_tid > committed)
        })
        .await;
    assert!(running(&s), "the pipeline must recover, not fail: {s:#?}\n{}", c.logs());
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");

    let committed = c.status().await.expect("status").last_committed_tid;
    c.stop_all();
    c.check_sinks(committed);
    eprintln!("containers: kill/restart test took {} ms", started.elapsed().as_millis());
}

/// (c) A host cut off the network (`docker network disconnect`): its report
/// deadline fires at the coordinator, nothing commits while it is cut off
/// (fail closed), and after `docker network connect` the pipeline recovers
/// and commits again, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_partitioned_host_fails_closed_and_recovers() {
    if !containers_can_run("containers_partitioned_host_fails_closed_and_recovers") {
        return;
    }
    let started = Instant::now();
    let c = DockerCluster::start(1000).await;
    c.wait_for("3 commits in containers", LONG, |s| running(s) && s.last_committed_tid >= 3).await;

    let victim = host_id(2);
    let ip_before = c.container_ip(&victim);
    c.docker(&["network", "disconnect", &c.network, &c.name(&victim)]);
    let cut_at = c.status().await.expect("status").last_committed_tid;
    // The coordinator hears nothing more from the host: after the report
    // deadline it drops it and leaves Running.
    let noticed = c
        .wait_for("the report deadline to fire for the cut-off host", Duration::from_millis(c.report_deadline_ms * 10), |s| {
            !running(s) && s.hosts.iter().any(|h| h.host_id == victim && !h.connected)
        })
        .await;
    let held = noticed.last_committed_tid;
    // A Prepared already delivered before the cut may still commit; nothing later.
    assert!(held <= cut_at + 1, "committed {held} after the cut at {cut_at}");
    let coordinator_log = c.log("coordinator");
    let why = format!("no report or heartbeat for over {} ms", c.report_deadline_ms);
    assert!(coordinator_log.contains(&why), "coordinator log must say the deadline fired ({why:?})\n{}", c.logs());

    // Observe the partition for twice the deadline: no commit, not Running.
    let until = Instant::now() + Duration::from_millis(2 * c.report_deadline_ms);
    let mut polls = 0;
    while Instant::now() < until {
        let s = c.status().await.expect("status during the partition");
        assert_eq!(s.last_committed_tid, held, "a tid committed while a host was cut off: {s:#?}");
        assert!(!running(&s), "Running while a host is cut off: {s:#?}");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(polls >= 5, "too few status polls during the partition ({polls})");

    c.docker(&["network", "connect", &c.network, &c.name(&victim)]);
    let reconnected = Instant::now();
    let ip_after = c.container_ip(&victim);
    let s = c
        .wait_for(&format!("Running again after the partition, past tid {held} (host ip {ip_before} -> {ip_after})"), LONG, |s| {
            s.pipeline_state == "Failed" || (running(s) && s.last_committed_tid > held)
        })
        .await;
    assert!(running(&s), "the pipeline must recover, not fail: {s:#?}\n{}", c.logs());
    assert!(s.epoch > noticed.epoch, "recovery runs in a new epoch: {s:#?}");
    eprintln!(
        "containers: deadline fired, {polls} polls saw no commit at tid {held}; committing again {} ms after reconnecting",
        reconnected.elapsed().as_millis()
    );

    let committed = c.status().await.expect("status").last_committed_tid;
    c.stop_all();
    c.check_sinks(committed);
    eprintln!("containers: partition test took {} ms", started.elapsed().as_millis());
}

/// (d) A replicated coordinator (3 containers, as deploy/compose runs it):
/// the leader's container is cut off the network; the other two elect a
/// leader, the hosts find it and the pipeline continues from their kept
/// state (no replay); reconnected, the old leader rejoins as a follower,
/// and every sink is exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_replicated_coordinator_survives_a_partitioned_leader() {
    if !containers_can_run("containers_replicated_coordinator_survives_a_partitioned_leader") {
        return;
    }
    let started = Instant::now();
    let c = DockerCluster::start_group(3, 3000).await;
    let (old, s) = c.wait_leader("a leader committing in containers", &[], |s| running(s) && s.last_committed_tid >= 3).await;
    let (epoch, committed) = (s.epoch, s.last_committed_tid);

    c.docker(&["network", "disconnect", &c.network, &c.name(&c.coordinators[old])]);
    let (new, s) = c
        .wait_leader(&format!("a new leader past tid {committed} with node {} cut off", old + 1), &[old], |s| {
            running(s) && s.epoch > epoch && s.last_committed_tid > committed + 2
        })
        .await;
    assert_ne!(new, old);
    let r = s.last_recovery.clone().unwrap_or_default();
    assert_eq!(r.path, "continue", "the hosts kept their state, so no replay: {}\n{}", r.why, c.logs());
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");

    // With its DNS alias again: peers and hosts reach it by name.
    c.docker(&["network", "connect", "--alias", &c.coordinators[old], &c.network, &c.name(&c.coordinators[old])]);
    // Docker re-publishes the port of a reconnected container elsewhere.
    let port = c.published_port(&c.coordinators[old]);
    let rejoined = wait_for_status_with(&format!("127.0.0.1:{port}"), None, "the old leader back as a follower", LONG, |f| {
        !f.is_leader && f.stale && f.leader_id != 0 && f.epoch >= s.epoch
    }, || c.logs())
    .await;
    let (_, s) = c
        .wait_leader("commits after the old leader rejoined", &[old], |x| running(x) && x.last_committed_tid > s.last_committed_tid + 2)
        .await;
    assert!(rejoined.last_committed_tid <= s.last_committed_tid);
    let old_log = c.log(&c.coordinators[old]);
    assert!(
        old_log.contains("this node no longer leads"),
        "the cut-off leader must say it stopped driving the pipeline\n{}",
        tail(&old_log, 80)
    );

    c.stop_all();
    c.check_sinks(s.last_committed_tid);
    eprintln!("containers: partitioned-leader test took {} ms", started.elapsed().as_millis());
}

/// (e) The replicated coordinator in containers with mutual TLS on every
/// connection, set up as deploy/README.md describes (one certificate naming
/// the members' DNS aliases, mounted read-only, the three LOCKSTEP_TLS_*
/// variables, bare host:port for the hosts): it elects and commits, a
/// killed leader's successor takes over over TLS (raft between the members,
/// the hosts' redirects), the old one rejoins, and every sink is exactly
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_replicated_coordinator_over_mutual_tls() {
    if !containers_can_run("containers_replicated_coordinator_over_mutual_tls") {
        return;
    }
    let c = DockerCluster::start_group_with(3, 3000, true).await;
    let (old, s) = c.wait_leader("a leader committing over TLS", &[], |s| running(s) && s.last_committed_tid >= 3).await;
    let plaintext = status_at_with(&format!("127.0.0.1:{}", c.ports[old]), None).await;
    assert!(plaintext.is_err(), "the leader answered plaintext: {plaintext:?}");
    let leader_log = c.log(&c.coordinators[old]);
    assert!(leader_log.contains("mutual TLS: certificate /etc/lockstep/tls/node.pem"), "{}", tail(&leader_log, 40));

    c.docker(&["kill", &c.name(&c.coordinators[old])]);
    let committed = s.last_committed_tid;
    let (new, s) = c
        .wait_leader(&format!("a new leader past tid {committed}"), &[old], |s| running(s) && s.last_committed_tid > committed + 2)
        .await;
    assert_ne!(new, old);
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");
    c.docker(&["start", &c.name(&c.coordinators[old])]);
    let (_, s) = c.wait_leader("commits with the old leader back", &[old], |x| running(x) && x.last_committed_tid > s.last_committed_tid + 2).await;
    c.stop_all();
    c.check_sinks(s.last_committed_tid);
}

/// The image runs both daemons (their `--help`): the loader and libraries
/// the build script copied are complete.
#[test]
fn image_runs_both_daemons() {
    if !containers_can_run("image_runs_both_daemons") {
        return;
    }
    let image = image();
    let coordinator = docker(&["run", "--rm", image, "coordinator", "serve", "--help"]).expect("coordinator --help in the image");
    assert!(coordinator.contains("LOCKSTEP_LISTEN"), "{coordinator}");
    let host = docker(&["run", "--rm", image, "host-agent", "--help"]).expect("host-agent --help in the image");
    assert!(host.contains("LOCKSTEP_HOST_ID"), "{host}");
}

/// The Kubernetes manifests in deploy/k8s pass offline schema validation
/// (kubernetes-validate, strict) and agree with each other
/// (deploy/k8s/validate.sh). Skipped when kubernetes-validate is missing.
#[test]
fn k8s_manifests_validate_offline() {
    let out = Command::new("bash").arg(repo_root().join("deploy/k8s/validate.sh")).output().expect("running deploy/k8s/validate.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(3) {
        println!("SKIPPED: k8s_manifests_validate_offline: {}", text.trim());
        return;
    }
    assert!(out.status.success(), "deploy/k8s/validate.sh failed:\n{text}");
}
