//! Clusters of real containers: the `lockstep:dev` image (built from local
//! files by `deploy/image/build.sh`, from the same binaries the other
//! end-to-end tests use), one coordinator (or a raft group
//! `coordinator-1..n`) and [`HOSTS`] host agents, configured the way
//! `deploy/compose` does it (LOCKSTEP_* environment variables, the hosts
//! reach the coordinators by their DNS names).
//!
//! Two wirings ([`Wiring`]): one network for everything, as compose runs
//! it, whose partitions are `docker network disconnect` of a whole
//! container; or a network per link, so that the test can cut any one link
//! between two daemons and leave the others up (a leader that still reaches
//! its hosts but not its peers, a host that reaches the followers but not
//! the leader).
//!
//! Each daemon's data directory is a bind-mounted temp dir, so its sink is
//! read directly. Every container and network is removed when the cluster
//! is dropped, also when a test panics. Used by tests/containers.rs and
//! tests/partition_soak.rs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lockstep_proto::v1 as pb;

use crate::certs::{TestCa, TlsFiles};
use crate::{bin_dir, check_sinks_of, host_id, status_at_with, tail, wait_for_status_with, wait_leader_at, ClusterOpts};

/// Host agents in every container cluster.
pub const HOSTS: usize = 3;
/// Their generator seed.
pub const SEED: u64 = 7;
pub const CLUSTER: &str = "containers";
/// The bound on every wait for the cluster to reach a state.
pub const LONG: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Runs `docker args…`; stdout (trimmed) or an error naming the command.
pub fn docker(args: &[&str]) -> Result<String, String> {
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
pub fn docker_unavailable() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| docker(&["version", "--format", "{{.Server.Version}}"]).err()).clone()
}

/// Returns false (after printing why) when the test must be skipped.
pub fn containers_can_run(test: &str) -> bool {
    match docker_unavailable() {
        Some(why) => {
            println!("SKIPPED: {test}: no usable docker CLI/daemon here ({why})");
            false
        }
        None => true,
    }
}

/// The image, built once per test binary by deploy/image/build.sh from the
/// binaries `bin_dir()` builds (the script reuses an image that already
/// holds exactly these binaries).
pub fn image() -> &'static str {
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

pub fn running(s: &pb::Status) -> bool {
    s.pipeline_state == "Running"
}

/// How a [`DockerCluster`]'s containers are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wiring {
    /// One network for every daemon, as deploy/compose runs it; the
    /// coordinators' gRPC ports are published on 127.0.0.1.
    Shared,
    /// A network of its own for every link between two daemons that talk
    /// (each pair of coordinators, each host with each coordinator), and
    /// one more, `admin`, that joins every container to the machine the
    /// test runs on and is never cut: the test reaches each coordinator at
    /// its address there. A coordinator's name (`coordinator-i`) is an
    /// alias on its link networks only, so from any daemon it resolves to
    /// the one network the two share, and cutting that network cuts that
    /// link and no other. Every network is `--internal`: with no default
    /// route, packets for a cut link have no other way to go.
    Links,
}

/// One coordinator or a raft group, and [`HOSTS`] host agents, as
/// containers. Drop removes the containers (with their anonymous volumes)
/// and the networks; the temp dir with the data dirs goes after that.
pub struct DockerCluster {
    pub prefix: String,
    /// The network every container was started on (the shared one, or
    /// `admin` with [`Wiring::Links`]).
    pub network: String,
    pub wiring: Wiring,
    image: String,
    pub dir: tempfile::TempDir,
    /// The coordinators' roles (container name suffix and DNS alias):
    /// `coordinator`, or `coordinator-1..N` for a replicated group.
    pub coordinators: Vec<String>,
    /// Where the test reaches each coordinator's gRPC port, in the same
    /// order: a port published on 127.0.0.1, or the address on `admin`.
    pub addrs: Vec<String>,
    pub report_deadline_ms: u64,
    /// Every container this cluster created, for cleanup.
    containers: Vec<String>,
    /// Every network it created, for cleanup.
    networks: Vec<String>,
    /// The links cut now ([`DockerCluster::cut`]), as sorted role pairs,
    /// each with the end that left the link's network.
    cut: BTreeMap<(String, String), String>,
    /// With mutual TLS: the files every daemon gets (mounted read-only at
    /// /etc/lockstep/tls) and the test's client presents.
    pub tls: Option<TlsFiles>,
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
        for network in &self.networks {
            if let Err(e) = docker(&["network", "rm", network]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A link between two roles, named the same whichever end is given first.
fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl DockerCluster {
    pub async fn start(report_deadline_ms: u64) -> DockerCluster {
        Self::start_group(1, report_deadline_ms).await
    }

    /// `n` coordinators: one plain `coordinator serve`, or a raft group
    /// `coordinator-1..n` (`LOCKSTEP_PEERS`, node ids 1..n), as
    /// deploy/compose runs it; the hosts list every coordinator.
    pub async fn start_group(n: usize, report_deadline_ms: u64) -> DockerCluster {
        Self::start_with(n, report_deadline_ms, false, Wiring::Shared).await
    }

    /// `start_group` with mutual TLS on every connection when `tls`: one
    /// certificate for every daemon, naming each coordinator's DNS alias
    /// (peers and hosts dial those) and 127.0.0.1 (the test dials the
    /// published ports), as deploy/README.md's "Mutual TLS" sets it up;
    /// and with the links `wiring` says. With [`Wiring::Links`] the test
    /// reaches the coordinators at their addresses on `admin`, which
    /// Docker assigns when they start and the certificate cannot name: the
    /// test's client checks the certificate against the first
    /// coordinator's alias instead, which the one certificate names.
    pub async fn start_with(n: usize, report_deadline_ms: u64, tls: bool, wiring: Wiring) -> DockerCluster {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let prefix = format!("lockstep-ct-{}-{}-{:08x}", std::process::id(), N.fetch_add(1, Ordering::SeqCst), nanos);
        let network = match wiring {
            Wiring::Shared => format!("{prefix}-net"),
            Wiring::Links => format!("{prefix}-admin"),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let coordinators: Vec<String> =
            if n == 1 { vec!["coordinator".into()] } else { (1..=n).map(|i| format!("coordinator-{i}")).collect() };
        let mut c = DockerCluster {
            prefix: prefix.clone(),
            network: network.clone(),
            wiring,
            image: image().to_string(),
            dir,
            coordinators: coordinators.clone(),
            addrs: Vec::new(),
            report_deadline_ms,
            containers: Vec::new(),
            networks: Vec::new(),
            cut: BTreeMap::new(),
            tls: None,
        };
        if tls {
            let certs = c.dir.path().join("tls");
            std::fs::create_dir_all(&certs).expect("tls dir");
            let ca = TestCa::new(&certs, "cluster");
            let names: Vec<&str> = coordinators.iter().map(String::as_str).collect();
            let mut files = ca.issue_naming(&certs, "node", &names);
            if wiring == Wiring::Links {
                files.server_name = Some(coordinators[0].clone());
            }
            c.tls = Some(files);
        }
        c.create_network(&network);
        if wiring == Wiring::Links {
            let hosts: Vec<String> = (0..HOSTS).map(host_id).collect();
            for (i, a) in coordinators.iter().enumerate() {
                for b in coordinators[i + 1..].iter().chain(&hosts) {
                    let net = c.link_network(a, b);
                    c.create_network(&net);
                }
            }
        }

        let hosts = (0..HOSTS).map(host_id).collect::<Vec<_>>().join(",");
        let deadline = report_deadline_ms.to_string();
        let peers = (1..=n).map(|i| format!("{i}={}:50051", coordinators[i - 1])).collect::<Vec<_>>().join(",");
        // A coordinator log filter for a run that needs more than the
        // default (e.g. `info,openraft=info` to see elections and pre-votes).
        let coordinator_log = std::env::var("LOCKSTEP_TEST_COORDINATOR_LOG").ok();
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
            if let Some(filter) = &coordinator_log {
                env.push(("RUST_LOG", filter.as_str()));
            }
            match wiring {
                Wiring::Shared => {
                    // Published on loopback only, on a free port the engine picks.
                    c.run(role, &["--network-alias", role, "--publish", "127.0.0.1::50051"], &env, &["coordinator", "serve"]);
                    let port = c.published_port(role);
                    c.addrs.push(format!("127.0.0.1:{port}"));
                }
                Wiring::Links => {
                    c.run(role, &[], &env, &["coordinator", "serve"]);
                    let ip = c.container_ip(role);
                    c.addrs.push(format!("{ip}:50051"));
                }
            }
        }
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

    fn create_network(&mut self, name: &str) {
        let label = format!("lockstep.test={}", self.prefix);
        let mut args = vec!["network", "create", "--label", &label];
        if self.wiring == Wiring::Links {
            args.push("--internal");
        }
        args.push(name);
        // Registered before it is made: a half-made cluster is removed too.
        self.networks.push(name.to_string());
        docker(&args).unwrap_or_else(|e| panic!("creating the test network {name}: {e}"));
    }

    /// The network of the link between roles `a` and `b` ([`Wiring::Links`]).
    fn link_network(&self, a: &str, b: &str) -> String {
        let (a, b) = link(a, b);
        format!("{}-{a}--{b}", self.prefix)
    }

    /// The roles `role` has a link with ([`Wiring::Links`]): a coordinator
    /// with every other daemon, a host with every coordinator.
    pub fn links_of(&self, role: &str) -> Vec<String> {
        let hosts = (0..HOSTS).map(host_id);
        if self.coordinators.iter().any(|c| c == role) {
            self.coordinators.iter().cloned().chain(hosts).filter(|r| r != role).collect()
        } else {
            self.coordinators.clone()
        }
    }

    /// The 127.0.0.1 port Docker publishes `role`'s gRPC port on
    /// ([`Wiring::Shared`]).
    pub fn published_port(&self, role: &str) -> u16 {
        let published = docker(&["port", &self.name(role), "50051/tcp"]).expect("published port");
        published
            .lines()
            .find_map(|l| l.strip_prefix("127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no 127.0.0.1 port in `docker port`: {published:?}"))
    }

    pub fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Starts one daemon with its data dir bind-mounted from the temp dir,
    /// as the calling user (so the temp dir can be removed). With
    /// [`Wiring::Links`] it is created, joined to its link networks under
    /// its role's name, and only then started, so that it never runs
    /// without them.
    fn run(&mut self, role: &str, extra: &[&str], env: &[(&str, &str)], cmd: &[&str]) {
        let data = self.dir.path().join(role);
        std::fs::create_dir_all(&data).expect("data dir");
        let name = self.name(role);
        let user = unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) };
        let label = format!("lockstep.test={}", self.prefix);
        let mount = format!("{}:/data", data.display());
        let how = match self.wiring {
            Wiring::Shared => ["run", "--detach"].as_slice(),
            Wiring::Links => ["create"].as_slice(),
        };
        let mut args: Vec<String> = how.iter().map(|s| s.to_string()).collect();
        args.extend(["--name", &name, "--label", &label, "--network", &self.network, "--user", &user].map(String::from));
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
        if self.wiring == Wiring::Links {
            for other in self.links_of(role) {
                self.join(role, &other);
            }
            docker(&["start", &name]).unwrap_or_else(|e| panic!("starting {role}: {e}"));
        }
    }

    /// Connects `role` to the network of its link with `other`, under its
    /// role's name.
    fn join(&self, role: &str, other: &str) {
        let net = self.link_network(role, other);
        docker(&["network", "connect", "--alias", role, &net, &self.name(role)])
            .unwrap_or_else(|e| panic!("joining {role} to its link with {other}: {e}\n{}", self.logs()));
    }

    /// Cuts the link between `a` and `b` ([`Wiring::Links`]): `b` leaves
    /// the link's network, so neither end can reach the other (packets on
    /// open connections are lost, new connections find no route or no
    /// name), and every other link stays up. Cutting a cut link does
    /// nothing.
    pub fn cut(&mut self, a: &str, b: &str) {
        assert_eq!(self.wiring, Wiring::Links, "links are cut only with Wiring::Links");
        if !self.cut.contains_key(&link(a, b)) {
            let net = self.link_network(a, b);
            self.docker(&["network", "disconnect", &net, &self.name(b)]);
            self.cut.insert(link(a, b), b.to_string());
        }
    }

    /// Every link of `role`: it reaches no other daemon, and none reaches
    /// it (the test still does, on `admin`).
    pub fn isolate(&mut self, role: &str) {
        for other in self.links_of(role) {
            self.cut(&other, role);
        }
    }

    /// Restores every cut link, and returns how many there were.
    pub fn heal(&mut self) -> usize {
        let cut = std::mem::take(&mut self.cut);
        for ((a, b), left) in &cut {
            self.join(left, if left == a { b } else { a });
        }
        cut.len()
    }

    /// The links cut now, as `a–b` pairs.
    pub fn cut_links(&self) -> Vec<String> {
        self.cut.keys().map(|(a, b)| format!("{a}–{b}")).collect()
    }

    /// GetStatus of the first coordinator.
    pub async fn status(&self) -> anyhow::Result<pb::Status> {
        status_at_with(&self.addrs[0], self.tls.as_ref()).await
    }

    /// Polls the first coordinator's GetStatus until `pred` holds; panics
    /// with the last status and the containers' logs after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&pb::Status) -> bool) -> pb::Status {
        wait_for_status_with(&self.addrs[0], self.tls.as_ref(), what, timeout, pred, || self.logs()).await
    }

    pub fn log(&self, role: &str) -> String {
        let out = Command::new("docker").args(["logs", &self.name(role)]).output();
        out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for role in &self.coordinators {
            out.push_str(&format!("---- {role} log ----\n{}\n", tail(&self.log(role), 200)));
        }
        for i in 0..HOSTS {
            out.push_str(&format!("\n---- {} log ----\n{}", host_id(i), tail(&self.log(&host_id(i)), 30)));
        }
        out
    }

    /// Writes every container's whole log into `dir` (kept after a failed
    /// soak), one file per role.
    pub fn save_logs(&self, dir: &Path) {
        let _ = std::fs::create_dir_all(dir);
        for role in self.coordinators.iter().cloned().chain((0..HOSTS).map(host_id)) {
            let _ = std::fs::write(dir.join(format!("{role}.log")), self.log(&role));
        }
    }

    /// `docker args…`, panicking with the containers' logs on failure.
    pub fn docker(&self, args: &[&str]) {
        docker(args).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// SIGTERM to every daemon, waits for each to exit, and asserts each
    /// exited cleanly (status 0): graceful shutdown as PID 1. Coordinators
    /// go first, with their hosts still connected (as a rolling update or
    /// a node drain does it), so that their stop must end the host streams
    /// itself; the hosts, left without a coordinator, go last.
    pub fn stop_all(&self) {
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
    pub async fn wait_leader(&self, what: &str, skip: &[usize], pred: impl Fn(&pb::Status) -> bool) -> (usize, pb::Status) {
        self.wait_leader_for(what, LONG, skip, pred).await
    }

    /// `wait_leader` with a bound of `timeout`.
    pub async fn wait_leader_for(
        &self,
        what: &str,
        timeout: Duration,
        skip: &[usize],
        pred: impl Fn(&pb::Status) -> bool,
    ) -> (usize, pb::Status) {
        wait_leader_at(&self.addrs, self.tls.as_ref(), what, timeout, |i| !skip.contains(&i), pred, || self.logs()).await
    }

    /// `role`'s address on the network it was started on.
    pub fn container_ip(&self, role: &str) -> String {
        let format = format!("{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}", self.network);
        docker(&["inspect", "--format", &format, &self.name(role)]).unwrap_or_default()
    }

    /// Every whole batch in host i's sink.
    pub fn sink(&self, i: usize) -> Vec<serde_json::Value> {
        crate::read_sink(&self.dir.path().join(host_id(i)))
    }

    /// After `stop_all`: every host's sink holds tids 1..=N exactly once, in
    /// order, N at least `committed`, epochs never going backwards, and its
    /// final aggregates equal an independent computation from the
    /// generator's seed.
    pub fn check_sinks(&self, committed: u64) {
        let opts = ClusterOpts { hosts: HOSTS, generator_seed: SEED, ..ClusterOpts::default() };
        for (i, tids) in check_sinks_of(&opts, |i| self.sink(i), committed).into_iter().enumerate() {
            assert!(tids >= committed, "host {i}: sink ends at {tids} but {committed} were committed");
        }
    }
}
